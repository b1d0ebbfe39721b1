//! Subscriptions over the process's one tail of the log (`eventstore::LogTail`): each keeps the
//! events its filter wants, from the tail in memory, so open subscriptions cost no database
//! reads of their own while they wait.

use async_graphql::{Context, Subscription as GqlSubscription};
use futures::{Stream, StreamExt};
use uuid::Uuid;

use super::query::checkpoint_after;
use super::rows;
use super::services;
use super::types::*;
use crate::auth::{self, caller};
use crate::error::{ApiResult, AppError};

pub struct Subscription;

#[GqlSubscription]
impl Subscription {
    /// Catch-up then live: every event after the position, in log order (AUDITOR, INTEGRATOR, ADMIN).
    async fn events(
        &self,
        ctx: &Context<'_>,
        after_position: Option<String>,
        filter: Option<EventFilter>,
    ) -> Result<impl Stream<Item = ApiResult<EventRecord>> + use<>, AppError> {
        caller(ctx)?.require(auth::EVENT_READERS)?;
        let after = checkpoint_after(ctx, after_position.as_deref()).await?;
        let filter = filter.unwrap_or_default();
        Ok(services(ctx)?
            .tail
            .subscribe(after, move |e| filter.matches(e))
            .map(|item| item.map(EventRecord).map_err(AppError::from)))
    }

    /// A booking's status as it changes (owner, ADMIN). The current state comes first, so a
    /// client knows the subscription is live; each change after it follows.
    async fn booking_updates(
        &self,
        ctx: &Context<'_>,
        booking_id: Uuid,
    ) -> Result<impl Stream<Item = ApiResult<Booking>> + use<>, AppError> {
        let who = caller(ctx)?.clone();
        who.user()?;
        let s = services(ctx)?.clone();
        let view = s.bookings.get(booking_id).await?;
        let owner = view
            .state
            .customer_id
            .ok_or_else(|| AppError::not_found("booking"))?;
        who.require_owner_or(owner, auth::ADMIN)?;
        let from = s.store.visible_head().await?;
        s.wait_for_projections(crate::services::projections::BOOKINGS, Some(from))
            .await?;
        let current = rows::booking(s.store.pool(), booking_id)
            .await?
            .map(Booking)
            .ok_or_else(|| AppError::not_found("booking"))?;
        let id = booking_id.to_string();
        let live = s
            .tail
            .subscribe(from, move |e| {
                e.aggregate_type == "booking" && e.aggregate_id == id
            })
            .then(move |item| {
                let s = s.clone();
                async move {
                    let event = item.map_err(AppError::from)?;
                    s.wait_for_projections(
                        crate::services::projections::BOOKINGS,
                        Some(event.checkpoint()),
                    )
                    .await?;
                    rows::booking(s.store.pool(), booking_id)
                        .await?
                        .map(Booking)
                        .ok_or_else(|| AppError::not_found("booking"))
                }
            });
        Ok(futures::stream::once(async move { Ok(current) }).chain(live))
    }

    /// Telemetry as it arrives for the given cars (ADMIN, INTEGRATOR). Each car's latest known
    /// reading comes first (so a client knows the subscription is live; it may repeat once if
    /// it arrived while subscribing), then every new reading in log order.
    async fn car_telemetry(
        &self,
        ctx: &Context<'_>,
        car_ids: Vec<Uuid>,
    ) -> Result<impl Stream<Item = ApiResult<TelemetryReading>> + use<>, AppError> {
        caller(ctx)?.require(auth::TELEMETRY_WRITE)?;
        if car_ids.is_empty() || car_ids.len() > 1_000 {
            return Err(AppError::bad_input("carIds", "must name 1 to 1000 cars"));
        }
        let s = services(ctx)?;
        let store = s.store.clone();
        let from = store.visible_head().await?;
        s.wait_for_projections(&[crate::services::projections::TELEMETRY], Some(from))
            .await?;
        let mut latest = Vec::new();
        for car in &car_ids {
            if let Some(row) = rows::latest_telemetry(store.pool(), *car).await? {
                latest.push(Ok(TelemetryReading::from(row)));
            }
        }
        let ids: std::collections::HashSet<String> = car_ids.iter().map(Uuid::to_string).collect();
        let live = s
            .tail
            .subscribe(from, move |e| {
                e.aggregate_type == "telemetry" && ids.contains(&e.aggregate_id)
            })
            .flat_map(move |item| {
                let readings: Vec<ApiResult<TelemetryReading>> = match item {
                    Err(e) => vec![Err(AppError::from(e))],
                    Ok(e) => match commands::codec::decode::<domain::telemetry::Telemetry>(&e) {
                        Ok(domain::telemetry::TelemetryEvent::ReadingsRecorded {
                            car_id,
                            readings,
                            ..
                        }) => readings
                            .iter()
                            .map(|r| Ok(TelemetryReading::from_domain(car_id, r)))
                            .collect(),
                        Ok(_) => Vec::new(),
                        Err(err) => vec![Err(AppError::internal(err))],
                    },
                };
                futures::stream::iter(readings)
            });
        Ok(futures::stream::iter(latest).chain(live))
    }
}
