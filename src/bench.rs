//! `fleetledger bench append` (being written).

use anyhow::Result;
use sqlx::postgres::PgConnectOptions;

#[derive(clap::Args, Debug)]
pub(crate) struct AppendOptions {}

pub(crate) async fn append(
    _server: PgConnectOptions,
    _executor: commands::ExecutorConfig,
    _options: AppendOptions,
) -> Result<()> {
    anyhow::bail!("not built yet")
}
