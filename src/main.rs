//! `orderflow`: one binary, one subcommand per role.

use clap::{Parser, Subcommand};
use orderflow::{App, Roles, Settings, cancel_on_signals};
use orderflow_processors::runtime::Role;

/// mimalloc instead of the system allocator: glibc's malloc and free were a quarter of the embedded
/// server's CPU in a profile of the checkout soak (`scripts/bench soak`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(name = "orderflow", version, about = "Order processing for marketplaces and delivery businesses")]
struct Cli {
    #[command(flatten)]
    settings: Settings,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run every role in one process (the default way to run orderflow).
    Serve,
    /// Run only the HTTP order intake.
    Ingest,
    /// Run only the GraphQL API.
    Graphql,
    /// Run one processor role.
    Process {
        #[arg(value_enum)]
        role: ProcessRole,
    },
    /// Apply the CQL schema (keyspaces and tables) to the configured `--store scylla://...`; idempotent.
    Migrate,
    /// Create the topics orderflow needs on the configured Kafka (start-up does this too) and list them.
    Topics,
    /// Send one partner order to the partner topic, encoded exactly as partners must (an example
    /// producer; see the README for the schema).
    PartnerOrder {
        #[arg(long)]
        partner_id: String,
        #[arg(long)]
        external_order_id: String,
        #[arg(long)]
        user_id: String,
        /// An item as SKU:QUANTITY; repeat for more items.
        #[arg(long = "item", required = true)]
        items: Vec<String>,
        /// The total the partner expects, e.g. 7.00.
        #[arg(long)]
        total_amount: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum ProcessRole {
    Orders,
    Inventory,
    Payment,
    Fulfillment,
    /// The catalog projector: builds the catalog read model from ProductUpdated events.
    Catalog,
}

impl From<ProcessRole> for Role {
    fn from(r: ProcessRole) -> Role {
        match r {
            ProcessRole::Orders => Role::Orders,
            ProcessRole::Inventory => Role::Inventory,
            ProcessRole::Payment => Role::Payment,
            ProcessRole::Fulfillment => Role::Fulfillment,
            ProcessRole::Catalog => Role::Catalog,
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    orderflow_platform::telemetry::init_logging("info,tower_http=warn,fjall=warn,lsm_tree=warn");
    let cli = Cli::parse();
    let roles = match cli.command {
        Command::Topics => return orderflow::tools::topics(&cli.settings).await,
        Command::Migrate => {
            cli.settings.check_replication()?;
            let s = &cli.settings;
            orderflow::backend::migrate_cql(
                &s.store,
                &s.cql_replication,
                s.namespace.as_ref(),
                &s.connections.cql_security().map_err(anyhow::Error::msg)?,
            )
            .await?;
            println!(
                "CQL schema applied to {} (new keyspaces replicated: {})",
                cli.settings.store, cli.settings.cql_replication
            );
            return Ok(());
        }
        Command::PartnerOrder { partner_id, external_order_id, user_id, items, total_amount } => {
            return orderflow::tools::partner_order(
                &cli.settings,
                partner_id,
                external_order_id,
                user_id,
                items,
                total_amount,
            )
            .await;
        }
        Command::Serve => Roles::all(),
        Command::Ingest => Roles { ingest: true, graphql: false, processors: vec![] },
        Command::Graphql => Roles { ingest: false, graphql: true, processors: vec![] },
        Command::Process { role } => Roles { ingest: false, graphql: false, processors: vec![role.into()] },
    };
    let listener = tokio::net::TcpListener::bind(cli.settings.listen).await.map_err(|e| {
        anyhow::anyhow!("cannot listen on {}: {e} (use --listen or ORDERFLOW_LISTEN)", cli.settings.listen)
    })?;
    let app = App::start(&cli.settings, roles, listener).await?;
    println!("orderflow listening on http://{}  (GraphiQL: http://{}/graphql)", app.addr, app.addr);
    cancel_on_signals(app.shutdown_token());
    let outcome = app.run_until_stopped().await;
    // Leave at once: what is left (dropping Kafka clients that would wait on an unreachable broker, the
    // runtime's blocking threads) holds nothing that is not already durable or abandoned.
    match outcome {
        Ok(()) => {
            tracing::info!("stopped");
            std::process::exit(0)
        }
        Err(e) => {
            tracing::error!(error = %e, "stopped because a role ended; exiting with status 1");
            std::process::exit(1)
        }
    }
}
