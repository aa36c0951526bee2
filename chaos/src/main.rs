//! `orderflow-chaos`: runs orderflow on real Kafka + Cassandra as one process per role (several instances
//! of each), drives a workload through it while injecting faults, waits for the system to settle and
//! checks that nothing was lost, duplicated, oversold or charged twice. `scripts/chaos` builds and runs it
//! (a short form in CI, a long form on demand); docs/RELIABILITY.md reports the long form.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use serde::Serialize;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use orderflow_chaos::checker::{Checker, Verdict};
use orderflow_chaos::cluster::{self, Cluster, ClusterConfig};
use orderflow_chaos::workload::{DECLINE_USERS, Workload, WorkloadConfig};

#[derive(Debug, Clone, Parser)]
#[command(name = "orderflow-chaos", about = "Workload + faults + checker for orderflow on Kafka + CQL")]
struct Args {
    /// The orderflow binary to run as role processes.
    #[arg(long)]
    orderflow: PathBuf,
    /// Kafka bootstrap (host:port).
    #[arg(long, env = "ORDERFLOW_TEST_KAFKA")]
    kafka: String,
    /// CQL contact point (host:port).
    #[arg(long, env = "ORDERFLOW_TEST_CQL")]
    cql: String,
    /// The scripts/test-env run dir of those servers: needed to restart them (broker and node faults).
    /// Without it those faults are skipped and the report says so.
    #[arg(long, env = "ORDERFLOW_TEST_RUN_DIR")]
    run_dir: Option<PathBuf>,
    /// The repository's scripts directory (for scripts/test-env/restart).
    #[arg(long, default_value = "scripts")]
    scripts: PathBuf,
    /// Orders (and bad inputs: about 3 %) the workload sends.
    #[arg(long, default_value_t = 600)]
    orders: usize,
    /// Orders per second the workload offers.
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    /// Instances of each role (ingest, graphql and every processor).
    #[arg(long, default_value_t = 2)]
    instances: usize,
    /// Products in the run; each starts with a stock budget of about 60 % of its expected demand.
    #[arg(long, default_value_t = 8)]
    skus: usize,
    /// kill -9 of a random role process this often (it is started again a second later); 0s: never.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    kill_every: Duration,
    /// SIGSTOP of a random processor this often, for --pause-for (past the 6 s session timeout); 0s: never.
    #[arg(long, default_value = "40s", value_parser = humantime::parse_duration)]
    pause_every: Duration,
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pause_for: Duration,
    /// A restart (SIGKILL, start) of the Kafka broker, then of the Cassandra node, alternating, this long
    /// after the previous one recovered (at least 30 s); the first after --engine-first. 0s: never.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    engine_every: Duration,
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    engine_first: Duration,
    /// The longest wait, after the last fault, for every order to settle and every check to pass.
    #[arg(long, default_value = "240s", value_parser = humantime::parse_duration)]
    settle_timeout: Duration,
    /// Where the role processes keep their data directories and logs (a temporary directory if unset).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Write the report as JSON here too.
    #[arg(long)]
    report: Option<PathBuf>,
}

/// One injected fault, for the report.
#[derive(Debug, Clone, Serialize)]
struct Fault {
    at_s: f64,
    kind: &'static str,
    target: String,
    detail: String,
}

#[derive(Debug, Serialize)]
struct Report {
    run: String,
    orders_offered: usize,
    rate_offered: f64,
    workload_seconds: f64,
    settle_seconds: f64,
    settled: bool,
    kills: usize,
    pauses: usize,
    kafka_restarts: usize,
    cassandra_restarts: usize,
    engine_faults_skipped: bool,
    unexpected_exits: Vec<(String, String)>,
    faults: Vec<Fault>,
    verdict: Verdict,
    violations: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let report = run(&args).await?;
    print_report(&report);
    if let Some(path) = &args.report {
        std::fs::write(path, serde_json::to_string_pretty(&report)?).with_context(|| format!("{}", path.display()))?;
    }
    if report.violations > 0 || !report.settled {
        eprintln!("chaos: FAILED: {} violation(s); settled: {}", report.violations, report.settled);
        std::process::exit(1);
    }
    println!("chaos: passed (0 lost, 0 duplicated, 0 oversold, 0 double-charged)");
    Ok(())
}

async fn run(args: &Args) -> anyhow::Result<Report> {
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let temp = tempfile::tempdir()?;
    let dir = args.work_dir.clone().unwrap_or_else(|| temp.path().to_owned());
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;

    let env = vec![
        ("ORDERFLOW_PAYMENT_DECLINE_USERS".to_owned(), DECLINE_USERS.join(",")),
        ("ORDERFLOW_PAYMENT_LATENCY_MS".to_owned(), "5".to_owned()),
        // Long enough that a database restart alone does not time orders out.
        ("ORDERFLOW_STUCK_ORDER_TIMEOUT".to_owned(), "120s".to_owned()),
    ];
    let mut cluster = Cluster::new(ClusterConfig {
        orderflow: args.orderflow.clone(),
        kafka: args.kafka.clone(),
        cql: args.cql.clone(),
        dir: dir.clone(),
        instances: args.instances,
        env,
    })?;
    println!("chaos: run {run}: {} role processes, work dir {}", cluster.procs.len(), dir.display());
    cluster.migrate()?;
    cluster.start_all()?;
    let all: Vec<String> = cluster.procs.values().map(cluster::RoleProc::base).collect();
    cluster::wait_ready(&http, &all, Duration::from_secs(180)).await?;
    let ingest = cluster.bases("ingest-");
    let graphql = cluster.bases("graphql-");
    let cluster = Arc::new(Mutex::new(cluster));

    let skus: Vec<String> = (0..args.skus).map(|i| format!("CHAOS-{}-{i}", run.to_uppercase())).collect();
    // Demand is about two units per order; the budget is 60 % of it, so some orders must be refused.
    let initial_stock = ((args.orders as i64 * 2 * 6 / 10) / args.skus.max(1) as i64).max(5);
    let workload = Workload::new(WorkloadConfig {
        run: run.clone(),
        orders: args.orders,
        rate: args.rate,
        skus: skus.clone(),
        ingest,
        graphql,
        kafka: args.kafka.clone(),
        accept_timeout: Duration::from_secs(90),
    })?;
    workload.create_products(initial_stock).await?;
    println!(
        "chaos: {} products with {initial_stock} units each; {} orders at {}/s; faults: kill -9 every {:?}, SIGSTOP every {:?} for {:?}, broker/node restart every {:?}",
        skus.len(),
        args.orders,
        args.rate,
        args.kill_every,
        args.pause_every,
        args.pause_for,
        args.engine_every
    );

    let started = Instant::now();
    let stop = CancellationToken::new();
    let faults = Arc::new(std::sync::Mutex::new(Vec::<Fault>::new()));
    let mut injector =
        tokio::spawn(inject(args.clone(), Arc::clone(&cluster), stop.clone(), Arc::clone(&faults), started));
    let restocks = tokio::spawn({
        let w = Arc::clone(&workload);
        let stop = stop.clone();
        async move { w.run_restocks(Duration::from_secs(3), stop).await }
    });
    let progress = tokio::spawn({
        let w = Arc::clone(&workload);
        let stop = stop.clone();
        let faults = Arc::clone(&faults);
        async move {
            while !stop.is_cancelled() {
                tokio::time::sleep(Duration::from_secs(10)).await;
                let (tried, accepted) = {
                    let r = w.record.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    (r.orders.len(), r.orders.values().filter(|o| o.accepted).count())
                };
                let n = faults.lock().unwrap_or_else(std::sync::PoisonError::into_inner).len();
                println!(
                    "chaos: {:>4}s  orders tried {tried}, accepted {accepted}; faults so far {n}",
                    started.elapsed().as_secs()
                );
            }
        }
    });
    // The injector runs until the workload is done; if it stops before (a server it could not bring
    // back), the run is void: say why instead of waiting on a system that cannot recover.
    tokio::select! {
        () = workload.run_orders(64) => {}
        ended = &mut injector => {
            stop.cancel();
            let why = match ended {
                Ok(Ok(_)) => "it ended".to_owned(),
                Ok(Err(e)) => format!("{e:#}"),
                Err(e) => e.to_string(),
            };
            anyhow::bail!("the fault injector stopped before the workload ended: {why}");
        }
    }
    let workload_seconds = started.elapsed().as_secs_f64();
    stop.cancel();
    let unexpected_exits = injector.await??;
    restocks.await?;
    progress.abort();
    println!("chaos: workload done after {workload_seconds:.0}s; faults stopped; waiting for the system to settle");

    // After the last fault: everything runs again; wait until every check passes, or the bound.
    {
        let mut c = cluster.lock().await;
        let names: Vec<String> = c.procs.keys().cloned().collect();
        for name in &names {
            c.set_paused(name, false);
        }
        c.reap_and_restart()?;
        for name in &names {
            if c.procs[name].pid().is_none() {
                c.start(name)?;
            }
        }
    }
    let settle_started = Instant::now();
    let checker = Checker::connect(&args.kafka, &args.cql, &run, initial_stock).await?;
    let (verdict, settled) = loop {
        // The checker reads a snapshot of what the workload did.
        let record = workload.record.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let v = checker.check(&record, &skus).await;
        match v {
            Ok(v) if v.violations() == 0 => break (v, true),
            Ok(v) if settle_started.elapsed() > args.settle_timeout => break (v, false),
            Ok(v) => {
                println!(
                    "chaos: settling ({:.0}s): {} unsettled, {} violation(s) so far",
                    settle_started.elapsed().as_secs_f64(),
                    v.unsettled,
                    v.violations()
                );
            }
            Err(e) if settle_started.elapsed() > args.settle_timeout => return Err(e),
            Err(e) => println!("chaos: checker could not read yet: {e:#}"),
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
    };
    let settle_seconds = settle_started.elapsed().as_secs_f64();
    cluster.lock().await.stop_all();

    let faults = faults.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    let count = |kind: &str| faults.iter().filter(|f| f.kind == kind).count();
    let violations = verdict.violations();
    Ok(Report {
        run,
        orders_offered: args.orders,
        rate_offered: args.rate,
        workload_seconds,
        settle_seconds,
        settled,
        kills: count("kill-9"),
        pauses: count("sigstop"),
        kafka_restarts: faults.iter().filter(|f| f.kind == "engine-restart" && f.target == "kafka").count(),
        cassandra_restarts: faults.iter().filter(|f| f.kind == "engine-restart" && f.target == "cassandra").count(),
        engine_faults_skipped: args.run_dir.is_none() || args.engine_every.is_zero(),
        unexpected_exits,
        faults,
        verdict,
        violations,
    })
}

/// Injects faults until `stop`: kill -9 (and a restart a second later), SIGSTOP/SIGCONT, and restarts of
/// the broker and the database node. Also acts as the supervisor: a role process that exits on its own is
/// counted and started again. Returns those exits.
async fn inject(
    plan: Args,
    cluster: Arc<Mutex<Cluster>>,
    stop: CancellationToken,
    faults: Arc<std::sync::Mutex<Vec<Fault>>>,
    started: Instant,
) -> anyhow::Result<Vec<(String, String)>> {
    let note = |kind: &'static str, target: &str, detail: String| {
        let at_s = started.elapsed().as_secs_f64();
        println!("chaos: {at_s:>6.1}s  {kind} {target} {detail}");
        faults.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(Fault {
            at_s,
            kind,
            target: target.to_owned(),
            detail,
        });
    };
    // At least 30 s between engine restarts (0: none).
    let engine_every =
        if plan.engine_every.is_zero() { Duration::ZERO } else { plan.engine_every.max(Duration::from_secs(30)) };
    let mut exits = Vec::new();
    let mut restart_at: Vec<(Instant, String)> = Vec::new();
    let mut resume_at: Option<(Instant, String)> = None;
    let mut next_kill = Instant::now() + plan.kill_every;
    let mut next_pause = Instant::now() + plan.pause_every / 4;
    let mut next_engine = Instant::now() + plan.engine_first;
    let mut engine_turn = 0usize;
    let mut engine_task: Option<tokio::task::JoinHandle<anyhow::Result<Duration>>> = None;
    let mut engine_target = "";
    while !stop.is_cancelled() {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = Instant::now();
        let mut c = cluster.lock().await;
        for (name, status) in c.reap_and_restart()? {
            note("exited", &name, format!("on its own ({status}); started again"));
            exits.push((name, status));
        }
        let (due, later): (Vec<_>, Vec<_>) = restart_at.into_iter().partition(|(at, _)| *at <= now);
        restart_at = later;
        for (_, name) in due {
            c.start(&name)?;
        }
        if let Some((at, name)) = resume_at.clone()
            && at <= now
        {
            c.set_paused(&name, false);
            note("sigcont", &name, String::new());
            resume_at = None;
        }
        if !plan.kill_every.is_zero() && now >= next_kill {
            next_kill = now + plan.kill_every;
            let candidates = c.running(&[]);
            if !candidates.is_empty() {
                let victim = candidates[fastrand::usize(..candidates.len())].clone();
                if c.kill9(&victim) {
                    note("kill-9", &victim, String::new());
                    restart_at.push((now + Duration::from_secs(1), victim));
                }
            }
        }
        if !plan.pause_every.is_zero() && resume_at.is_none() && now >= next_pause {
            next_pause = now + plan.pause_every;
            let candidates = c.running(&["orders-", "inventory-", "payment-"]);
            if !candidates.is_empty() {
                let victim = candidates[fastrand::usize(..candidates.len())].clone();
                if c.set_paused(&victim, true) {
                    note("sigstop", &victim, format!("for {:?}", plan.pause_for));
                    resume_at = Some((now + plan.pause_for, victim));
                }
            }
        }
        drop(c);
        if let Some(task) = &engine_task
            && task.is_finished()
        {
            let Some(task) = engine_task.take() else { continue };
            let took = task.await??;
            note("recovered", engine_target, format!("back after {:.1}s", took.as_secs_f64()));
            next_engine = Instant::now() + engine_every;
        }
        if let Some(run_dir) = &plan.run_dir
            && engine_task.is_none()
            && !engine_every.is_zero()
            && now >= next_engine
        {
            engine_target = if engine_turn.is_multiple_of(2) { "kafka" } else { "cassandra" };
            engine_turn += 1;
            note("engine-restart", engine_target, "SIGKILL, then start on the same data".to_owned());
            let (scripts, run_dir) = (plan.scripts.clone(), run_dir.clone());
            let what = engine_target;
            engine_task = Some(tokio::spawn(async move { cluster::restart_engine(&scripts, &run_dir, what).await }));
        }
    }
    // The last fault's recovery belongs to the run: wait for an engine that is coming back.
    if let Some(task) = engine_task {
        let took = task.await??;
        note("recovered", engine_target, format!("back after {:.1}s", took.as_secs_f64()));
    }
    let mut c = cluster.lock().await;
    for (_, name) in restart_at {
        c.start(&name)?;
    }
    if let Some((_, name)) = resume_at {
        c.set_paused(&name, false);
        note("sigcont", &name, String::new());
    }
    Ok(exits)
}

fn print_report(r: &Report) {
    let v = &r.verdict;
    println!("\n==== chaos report (run {}) ====", r.run);
    println!(
        "workload: {} offered at {}/s over {:.0}s; {} orders tried, {} accepted, {} never accepted; {} bad inputs refused",
        r.orders_offered,
        r.rate_offered,
        r.workload_seconds,
        v.attempted,
        v.accepted,
        v.never_accepted,
        v.invalid_refused
    );
    println!(
        "faults: {} kill -9, {} SIGSTOP, {} Kafka restarts, {} Cassandra restarts{}; {} exits on their own",
        r.kills,
        r.pauses,
        r.kafka_restarts,
        r.cassandra_restarts,
        if r.engine_faults_skipped { " (engine faults skipped: no --run-dir)" } else { "" },
        r.unexpected_exits.len()
    );
    println!("final statuses: {:?}", v.statuses);
    println!(
        "money: {} authorisations, {} charges, {} voids, {} refunds; dead letters of this run: {}; restocked units: {}",
        v.authorisations, v.charges, v.voids, v.refunds, v.dead_letters, v.restock_units
    );
    let counts: Vec<String> = v.counts().iter().map(|(name, n)| format!("{name} {n}")).collect();
    println!("checker: {}", counts.join(", "));
    if !v.lost_ids.is_empty() {
        println!("lost: {}", v.lost_ids.join(", "));
    }
    for (sku, (a, res, sold, expected, held)) in &v.stock {
        println!(
            "  {sku}: available {a} + reserved {res} + sold {sold} (expected total {expected}; held by orders {held})"
        );
    }
    println!("settled: {} after {:.1}s from the last fault; violations: {}", r.settled, r.settle_seconds, r.violations);
}
