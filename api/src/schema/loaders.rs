//! Batched lookups (DataLoader) for fields that every item of a list resolves: a page of cars
//! asks for its branches in one query, a page of bookings for its cars in one query.

use std::collections::HashMap;

use async_graphql::dataloader::{DataLoader, Loader};
use sqlx::PgPool;
use uuid::Uuid;

use commands::branches::{Branch, Branches};

use super::rows::CarRow;
use crate::error::AppError;

/// Branches by code.
pub(crate) struct BranchLoader(pub(crate) Branches);

impl Loader<String> for BranchLoader {
    type Value = Branch;
    type Error = AppError;

    async fn load(&self, keys: &[String]) -> Result<HashMap<String, Branch>, AppError> {
        let rows = self.0.get_many(keys).await?;
        Ok(rows.into_iter().map(|b| (b.code.clone(), b)).collect())
    }
}

/// Cars (search read model) by id.
pub(crate) struct CarLoader(pub(crate) PgPool);

impl Loader<Uuid> for CarLoader {
    type Value = CarRow;
    type Error = AppError;

    async fn load(&self, keys: &[Uuid]) -> Result<HashMap<Uuid, CarRow>, AppError> {
        let rows = projections::search::cars(&self.0, keys).await?;
        Ok(rows.into_iter().map(|c| (c.car_id, c)).collect())
    }
}

/// The loaders, uncached (every request sees fresh rows), batching concurrent lookups.
pub(crate) fn register(
    builder: async_graphql::SchemaBuilder<super::Query, super::Mutation, super::Subscription>,
    pool: &PgPool,
) -> async_graphql::SchemaBuilder<super::Query, super::Mutation, super::Subscription> {
    builder
        .data(DataLoader::new(
            BranchLoader(Branches::new(pool.clone())),
            tokio::spawn,
        ))
        .data(DataLoader::new(CarLoader(pool.clone()), tokio::spawn))
}
