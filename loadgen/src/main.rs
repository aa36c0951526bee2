//! `orderflow-load`: load generator and in-run baselines for orderflow. See `--help`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use orderflow_loadgen::{Comparison, Load, Report, RunConfig, Scenario, baseline, chart, summary};
use serde::Serialize;

#[derive(Debug, Parser)]
#[command(name = "orderflow-load", version, about = "Load generator and in-run baselines for orderflow")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Drive a running orderflow with a scenario.
    Run(RunArgs),
    /// Measure the bare axum baseline (`place` with the same client and load settings).
    BaselineHttp(BaselineHttpArgs),
    /// Serve the bare axum baseline (for running it pinned to the server's core).
    BareServer {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: std::net::SocketAddr,
        /// Stop by itself after this long (a bound; Ctrl-C or SIGTERM stop it earlier).
        #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
        max_lifetime: Duration,
    },
    /// Raw fjall writes in the shape of one order's pipeline writes (23 commits, 39 keys per order).
    BaselineFjall {
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        duration: Duration,
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// Directory for the database (default: a fresh temporary directory, removed afterwards).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// fsync every commit, like `orderflow --sync-writes`.
        #[arg(long)]
        sync_writes: bool,
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Raw Kafka produce rate with the product's producer settings (idempotent, acks=all) and records
    /// (the 7 envelopes of an order), into a throwaway topic with the pipeline's partition count.
    BaselineKafka {
        /// Bootstrap servers, `HOST:PORT[,HOST:PORT]` (loopback only).
        #[arg(long)]
        bootstrap: String,
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Records sent and not yet acknowledged, at most.
        #[arg(long, default_value_t = 128)]
        in_flight: usize,
        /// Replication factor of the throwaway topic.
        #[arg(long, default_value_t = 1)]
        replication_factor: i32,
        /// The product's Kafka login settings (`ORDERFLOW_KAFKA_USERNAME`, ...).
        #[command(flatten)]
        connections: orderflow_platform::connection::Connections,
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Raw CQL write rates with the product's driver and consistency: prepared INSERTs, then LWTs
    /// (INSERT ... IF NOT EXISTS), each for `--duration`, into a throwaway keyspace.
    BaselineCql {
        /// Contact points, `HOST:PORT[,HOST:PORT]` (loopback only).
        #[arg(long)]
        contact: String,
        /// Length of each of the two phases.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Requests in flight, at most.
        #[arg(long, default_value_t = 128)]
        concurrency: usize,
        /// Value size of a plain row (the pipeline's plain rows are index and ledger rows: small).
        #[arg(long, default_value_t = 100)]
        plain_bytes: usize,
        /// Value size of an LWT row (about the mean of the pipeline's conditional writes: order documents of
        /// about 1 KB and small reservation, payment and shipment rows).
        #[arg(long, default_value_t = 600)]
        lwt_bytes: usize,
        /// The product's CQL login settings (`ORDERFLOW_CQL_USERNAME`, ...).
        #[command(flatten)]
        connections: orderflow_platform::connection::Connections,
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
struct LoadArgs {
    /// Base URL of the server (loopback only).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    target: String,
    /// Closed loop: this many concurrent users, each sending as soon as it has its answer.
    #[arg(long, conflicts_with = "rate")]
    users: Option<usize>,
    /// Open loop: this many requests per second, latency measured from the intended send time.
    #[arg(long)]
    rate: Option<f64>,
    /// Closed loop: stop each user after this many requests (the duration still bounds the run).
    #[arg(long, requires = "users")]
    iterations: Option<u64>,
    /// Closed loop: a user's pause between two requests (think time), e.g. `1s`. Each user also starts
    /// after a random part of one pause, so users do not all arrive at once.
    #[arg(long, visible_alias = "think", default_value = "0ms", value_parser = humantime::parse_duration)]
    think_time: Duration,
    /// Closed loop: each pause is drawn uniformly from think-time x (1 +- this), e.g. 0.5 for +-50 %.
    #[arg(long, default_value_t = 0.5, value_parser = parse_jitter)]
    think_jitter: f64,
    /// Open loop: requests in flight at most (sends past it wait, and that wait counts as latency).
    #[arg(long, default_value_t = 4096)]
    max_in_flight: usize,
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    duration: Duration,
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    request_timeout: Duration,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write a latency-over-time chart (SVG) here.
    #[arg(long)]
    chart: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct RunArgs {
    #[command(flatten)]
    load: LoadArgs,
    #[arg(long, value_enum, default_value = "place")]
    scenario: Scenario,
    /// The server's admin token, for seeding the catalog (createProduct) and reading `metrics`: from
    /// `ORDERFLOW_ADMIN_TOKEN` only, as the server takes it (never a flag: it would show in `ps`).
    #[arg(skip = std::env::var("ORDERFLOW_ADMIN_TOKEN").ok().filter(|t| !t.is_empty()))]
    admin_token: Option<String>,
    /// Products to create (unique SKUs) before the run; `flash` creates one.
    #[arg(long, default_value_t = 50)]
    seed_products: usize,
    /// `flash`: units in stock of the one SKU everybody orders.
    #[arg(long, default_value_t = 100)]
    flash_stock: u32,
    /// Placed orders sampled for the end-to-end time.
    #[arg(long, default_value_t = 200)]
    sample_orders: usize,
    /// Longest wait after the load for sampled orders to finish.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    e2e_wait: Duration,
    /// Also run the bare axum baseline in this process with the same load, and print the ratio
    /// (`place` only).
    #[arg(long)]
    spawn_baseline: bool,
    /// Place at most this many orders in the whole run (over every user; the duration still bounds it).
    /// Placement progress is reported at every 1 % of it.
    #[arg(long)]
    max_orders: Option<u64>,
    /// `checkout`: read a placed order this often until it is CONFIRMED, REJECTED or CANCELLED.
    #[arg(long, default_value = "25ms", value_parser = humantime::parse_duration)]
    poll_interval: Duration,
    /// `checkout`: an order not final this long after it was sent is a timed-out checkout (an error).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    checkout_timeout: Duration,
    /// Measure this process's CPU time (utime + stime from /proc/PID/stat) during the load, and its cost per
    /// order net of its idle rate, e.g. `--cpu-pid cassandra=4242`. Repeatable.
    #[arg(long, value_name = "LABEL=PID", value_parser = orderflow_loadgen::cpu::parse_pid_arg)]
    cpu_pid: Vec<(String, u32)>,
    /// With --cpu-pid: measure each process's idle CPU rate over this window just before the load (after
    /// seeding the catalog). 0 takes the idle rate as 0.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    cpu_idle: Duration,
    /// Clock ticks per second of /proc/PID/stat (`getconf CLK_TCK`).
    #[arg(long, default_value_t = 100)]
    clk_tck: u64,
}

#[derive(Debug, Args)]
struct BaselineHttpArgs {
    #[command(flatten)]
    load: LoadArgs,
    /// Measure the bare server already at `--target` (see `bare-server`) instead of starting one here.
    #[arg(long)]
    external: bool,
    /// `place` (POST /v1/orders, the intake comparison) or `bare-product` (GET /v1/products/{sku}, the
    /// comparison for catalog reads).
    #[arg(long, default_value = "place")]
    scenario: Scenario,
}

#[derive(Debug, Serialize)]
struct Output<'a> {
    #[serde(flatten)]
    report: &'a Report,
    baseline: Option<&'a Report>,
    comparison: Option<Comparison>,
}

fn config(args: &LoadArgs, scenario: Scenario) -> anyhow::Result<RunConfig> {
    let load = match (args.users, args.rate) {
        (_, Some(rate)) => Load::Open { rate_per_s: rate, max_in_flight: args.max_in_flight },
        (users, None) => Load::Closed {
            users: users.unwrap_or(8).max(1),
            iterations: args.iterations,
            think_ms: u64::try_from(args.think_time.as_millis()).unwrap_or(u64::MAX),
        },
    };
    if args.duration > Duration::from_secs(3600) {
        bail!("--duration is capped at 1h");
    }
    let mut cfg = RunConfig::new(&args.target);
    cfg.scenario = scenario;
    cfg.load = load;
    cfg.duration = args.duration;
    cfg.request_timeout = args.request_timeout;
    cfg.progress = !args.quiet;
    cfg.think_jitter = args.think_jitter;
    Ok(cfg)
}

fn parse_jitter(s: &str) -> Result<f64, String> {
    let j: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if (0.0..=1.0).contains(&j) { Ok(j) } else { Err("the jitter is a fraction between 0 and 1".into()) }
}

/// Loopback `HOST:PORT` list: like the HTTP target, baselines only ever load this machine.
fn loopback_hosts(list: &str) -> anyhow::Result<Vec<String>> {
    let hosts: Vec<String> = list.split(',').map(|h| h.trim().to_owned()).filter(|h| !h.is_empty()).collect();
    if hosts.is_empty() {
        bail!("no HOST:PORT given");
    }
    for h in &hosts {
        let url = reqwest::Url::parse(&format!("tcp://{h}")).with_context(|| format!("{h:?} is not HOST:PORT"))?;
        orderflow_loadgen::client::check_loopback(&url)?;
    }
    Ok(hosts)
}

fn write_json(path: Option<&PathBuf>, value: &impl Serialize) -> anyhow::Result<()> {
    if let Some(path) = path {
        std::fs::write(path, serde_json::to_vec_pretty(value)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn write_outputs(args: &LoadArgs, out: &Output<'_>) -> anyhow::Result<()> {
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(out)?).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("results: {}", path.display());
    }
    if let Some(path) = &args.chart {
        chart::write_svg(out.report, path)?;
        eprintln!("chart: {}", path.display());
    }
    Ok(())
}

async fn bare_baseline(args: &LoadArgs, external: bool, scenario: Scenario) -> anyhow::Result<Report> {
    if !matches!(scenario, Scenario::Place | Scenario::BareProduct) {
        bail!("the bare server answers `place` and `bare-product` only");
    }
    let mut cfg = config(args, scenario)?;
    cfg.seed = false;
    let stop = if external {
        None
    } else {
        let (addr, stop) = baseline::spawn_bare().await?;
        cfg.target = format!("http://{addr}");
        Some(stop)
    };
    let report = orderflow_loadgen::run(&cfg).await;
    if let Some(stop) = stop {
        let _ = stop.send(());
    }
    report
}

async fn main_async(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(args) => {
            let mut cfg = config(&args.load, args.scenario)?;
            cfg.admin_token = args.admin_token.clone();
            cfg.seed_products = args.seed_products;
            cfg.flash_stock = args.flash_stock;
            cfg.sample_orders = args.sample_orders;
            cfg.e2e_wait = args.e2e_wait;
            cfg.max_orders = args.max_orders;
            cfg.poll_interval = args.poll_interval;
            cfg.checkout_timeout = args.checkout_timeout;
            cfg.cpu_pids = args.cpu_pid.clone();
            cfg.cpu_idle = args.cpu_idle;
            cfg.clk_tck = args.clk_tck;
            let report = orderflow_loadgen::run(&cfg).await?;
            print!("{}", summary(&report));
            let bare = if args.spawn_baseline {
                if args.scenario != Scenario::Place {
                    bail!("--spawn-baseline compares `place` only");
                }
                let bare = bare_baseline(&args.load, false, Scenario::Place).await?;
                println!("baseline: bare axum handler, same client and load");
                print!("{}", summary(&bare));
                Some(bare)
            } else {
                None
            };
            let comparison = bare.as_ref().and_then(|b| Comparison::place(&report, b));
            if let Some(c) = &comparison {
                println!(
                    "ratio product/bare: throughput {:.3} ({:.0} vs {:.0} req/s), p99 {:.2}x ({:.2} vs {:.2} ms)",
                    c.throughput_ratio, c.product_per_s, c.bare_per_s, c.p99_ratio, c.product_p99_ms, c.bare_p99_ms
                );
            }
            write_outputs(&args.load, &Output { report: &report, baseline: bare.as_ref(), comparison })
        }
        Command::BaselineHttp(args) => {
            let report = bare_baseline(&args.load, args.external, args.scenario).await?;
            print!("{}", summary(&report));
            write_outputs(&args.load, &Output { report: &report, baseline: None, comparison: None })
        }
        Command::BareServer { listen, max_lifetime } => {
            if !listen.ip().is_loopback() {
                bail!("the bare server listens on loopback only");
            }
            let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
            println!("bare baseline listening on http://{}", listener.local_addr()?);
            baseline::serve_bare(listener, async move {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    () = terminate() => {}
                    () = tokio::time::sleep(max_lifetime) => {}
                }
            })
            .await
        }
        Command::BaselineFjall { duration, threads, dir, sync_writes, json } => {
            let tmp = tempfile::tempdir()?;
            let dir = dir.unwrap_or_else(|| tmp.path().to_owned());
            let r = tokio::task::spawn_blocking(move || baseline::run_fjall(&dir, threads, duration, sync_writes))
                .await??;
            println!(
                "raw fjall, {} thread(s), {} commits / {} keys per order: {:.0} orders/s ({:.0} commits/s, {:.0} keys/s) over {:.1} s",
                r.threads,
                r.commits_per_order,
                r.keys_per_order,
                r.orders_per_s,
                r.commits_per_s,
                r.keys_per_s,
                r.duration_s
            );
            write_json(json.as_ref(), &r)
        }
        Command::BaselineKafka { bootstrap, duration, in_flight, replication_factor, connections, json } => {
            let hosts = loopback_hosts(&bootstrap)?;
            let security = connections.kafka_security().map_err(anyhow::Error::msg)?;
            let r = baseline::kafka::run_kafka(&hosts.join(","), &security, in_flight, duration, replication_factor)
                .await?;
            println!(
                "raw Kafka produce, {} partitions, {} in flight, {:.0} B records: {:.0} messages/s ({:.0} B/s, {} failed) \
                 over {:.1} s = {:.0} orders/s at {} records per order",
                r.partitions,
                r.in_flight,
                r.mean_record_bytes,
                r.messages_per_s,
                r.bytes_per_s,
                r.failed,
                r.duration_s,
                r.orders_per_s,
                r.plan.messages
            );
            write_json(json.as_ref(), &r)
        }
        Command::BaselineCql { contact, duration, concurrency, plain_bytes, lwt_bytes, connections, json } => {
            let hosts = loopback_hosts(&contact)?;
            let security = connections.cql_security().map_err(anyhow::Error::msg)?;
            let r = baseline::cql::run_cql(&hosts, &security, concurrency, duration, plain_bytes, lwt_bytes).await?;
            println!(
                "raw CQL, {} in flight: {:.0} INSERTs/s ({} errors), {:.0} LWTs/s ({} errors, {} not applied) \
                 = {:.0} orders/s at {} plain rows + {} LWTs per order",
                r.concurrency,
                r.plain.per_s,
                r.plain.errors,
                r.lwt.per_s,
                r.lwt.errors,
                r.lwt.not_applied,
                r.orders_per_s,
                r.plan.plain_rows,
                r.plan.lwts
            );
            write_json(json.as_ref(), &r)
        }
    }
}

#[cfg(unix)]
async fn terminate() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut s) => {
            s.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}

#[cfg(not(unix))]
async fn terminate() {
    std::future::pending().await
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    main_async(Cli::parse()).await
}
