//! The `sluice` binary: parses arguments, loads the config, installs tracing, runs the node,
//! and turns signals into lifecycle events (SIGHUP reloads, SIGTERM/Ctrl-C drain). Everything
//! else is in the `sluice_node` library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use sluice_node::{Config, Node};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

// The request path allocates a few small objects per request (header maps, hyper's message
// state); mimalloc's thread-local free lists make that cheaper than glibc malloc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// sluice: a clustered reverse proxy with fleet-wide stick tables.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Config file (TOML). Keys may be overridden by `SLUICE_<SECTION>__<KEY>` variables.
    #[arg(long, short = 'c', env = "SLUICE_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Human, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate the config and print it with every default filled in.
    Check,
    /// Start a complete local fleet: three nodes replicating over mutual TLS on loopback,
    /// three demo backends, a fleet-wide rate limit and stickiness. Ctrl-C stops it.
    Demo,
    /// Serve a demo backend that answers every request with its name.
    Backend {
        /// The name it answers with.
        #[arg(long)]
        name: String,
        /// Where it listens.
        #[arg(long, default_value = "0.0.0.0:80")]
        listen: std::net::SocketAddr,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match real_main(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sluice: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn real_main(args: Args) -> anyhow::Result<ExitCode> {
    match &args.command {
        Some(Command::Demo) => {
            install_tracing(args.log_format);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            return runtime.block_on(demo());
        }
        Some(Command::Backend { name, listen }) => {
            install_tracing(args.log_format);
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            return runtime.block_on(backend(name.clone(), *listen));
        }
        _ => {}
    }
    let path = args
        .config
        .clone()
        .context("no config file: pass --config FILE (or set SLUICE_CONFIG)")?;
    let config = Config::load(&path, std::env::vars())?;
    if let Some(Command::Check) = args.command {
        if let Err((field, error)) = sluice_node::tls::check(&config) {
            anyhow::bail!("{}: {field}: {error}", path.display());
        }
        print!("{}", config.to_toml());
        eprintln!("{}: ok", path.display());
        return Ok(ExitCode::SUCCESS);
    }
    install_tracing(args.log_format);
    let runtime = match config.node.threads {
        // One thread: no work stealing, no cross-thread wakeups (compare with HAProxy nbthread 1).
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        0 => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?,
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build()?,
    };
    runtime.block_on(run(path, config))
}

fn install_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init(),
    }
}

async fn run(path: PathBuf, config: Config) -> anyhow::Result<ExitCode> {
    use tokio::signal::unix::{SignalKind, signal};

    let token = CancellationToken::new();
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let node = Node::start(config, token.clone()).await?;
    let stopped = {
        let node = node.clone();
        tokio::spawn(async move { node.stopped().await })
    };
    loop {
        tokio::select! {
            // SIGHUP: re-read the file; a config that does not validate or apply is refused
            // and the running one stays.
            _ = hup.recv() => reload(&node, &path).await,
            // SIGTERM: orchestrators send it to start a graceful shutdown.
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    info!("shutdown requested");
    token.cancel();
    // A second signal while draining stops at once.
    let drained = tokio::select! {
        r = stopped => r.unwrap_or(false),
        _ = term.recv() => { warn!("second signal: stopping now"); false }
        _ = tokio::signal::ctrl_c() => { warn!("second signal: stopping now"); false }
    };
    if !drained {
        warn!("some connections were cut at the end of the drain period");
    }
    Ok(ExitCode::SUCCESS)
}

async fn demo() -> anyhow::Result<ExitCode> {
    let demo = sluice_node::demo::Demo::start().await?;
    println!("{}", demo.banner());
    wait_for_stop().await?;
    info!("stopping the demo");
    demo.stop().await;
    Ok(ExitCode::SUCCESS)
}

async fn backend(name: String, listen: std::net::SocketAddr) -> anyhow::Result<ExitCode> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    info!(%name, %listen, "demo backend");
    let token = CancellationToken::new();
    let serve = tokio::spawn(sluice_node::demo::serve_backend(
        name,
        listener,
        token.clone(),
    ));
    wait_for_stop().await?;
    token.cancel();
    let _ = serve.await;
    Ok(ExitCode::SUCCESS)
}

/// SIGTERM or Ctrl-C.
async fn wait_for_stop() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}

async fn reload(node: &Node, path: &Path) {
    info!(config = %path.display(), "reloading config");
    // Certificates rotate on SIGHUP whether or not the config file changed.
    node.reload_tls();
    match Config::load(path, std::env::vars()) {
        Err(error) => error!(%error, "new config refused; the running config stays"),
        Ok(config) => match node.reload(config).await {
            Ok(()) => info!("config reloaded"),
            Err(error) => {
                error!(%error, "new config could not be applied; the running config stays")
            }
        },
    }
}
