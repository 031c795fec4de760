//! The command line of INTERFACE.md section 1. Exit codes: 0 success,
//! 1 runtime failure, 2 configuration error.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{self, Config, ConfigError};

#[derive(Parser, Debug)]
#[command(
    name = "twofa-authz",
    version,
    about = "Second-factor enforcement for Keycloak sessions behind Envoy and nginx"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the gRPC (Envoy ext_authz) and HTTP listeners until SIGTERM/SIGINT.
    Serve {
        #[arg(long, env = "TWOFA_CONFIG")]
        config: Option<PathBuf>,
        /// Everything embedded, for trying it on one machine. Never in production.
        #[arg(long)]
        dev: bool,
    },
    /// Apply database migrations and exit.
    Migrate {
        #[arg(long, env = "TWOFA_CONFIG")]
        config: Option<PathBuf>,
        /// Also rewrite every encrypted secret under the first encryption key.
        #[arg(long)]
        reencrypt: bool,
    },
    /// Administrator reset of one user (by Keycloak `sub`).
    ResetUser {
        sub: String,
        #[arg(long, env = "TWOFA_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Validate the configuration and print it with secrets redacted.
    CheckConfig {
        #[arg(long, env = "TWOFA_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Print an `otpauth://` URI (e.g. from `POST /user/generate-totp`) as a
    /// QR code in the terminal, to scan with an authenticator app. Reads the
    /// URI from standard input when none (or `-`) is given. Needs no
    /// configuration.
    Qr { uri: Option<String> },
}

pub const EXIT_RUNTIME: i32 = 1;
pub const EXIT_CONFIG: i32 = 2;

/// Entry point of the binary; returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    if let Command::Qr { uri } = &cli.command {
        return crate::factor::qr::print_to_terminal(uri.as_deref());
    }
    let (path, dev) = match &cli.command {
        Command::Serve { config, dev } => (config.clone(), *dev),
        Command::Migrate { config, .. }
        | Command::ResetUser { config, .. }
        | Command::CheckConfig { config } => (config.clone(), false),
        Command::Qr { .. } => (None, false),
    };
    let cfg = match config::load(path.as_deref(), std::env::vars(), dev) {
        Ok(c) => c,
        Err(e) => return config_error(&e),
    };
    if let Command::CheckConfig { .. } = cli.command {
        print!("{}", cfg.redacted_toml());
        return 0;
    }
    init_logging(&cfg);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return EXIT_RUNTIME;
        }
    };
    rt.block_on(async move {
        match cli.command {
            Command::Serve { .. } => serve(cfg).await,
            Command::Migrate { reencrypt, .. } => crate::admin::migrate(cfg, reencrypt).await,
            Command::ResetUser { sub, .. } => crate::admin::reset_user(cfg, &sub).await,
            Command::CheckConfig { .. } | Command::Qr { .. } => 0,
        }
    })
}

fn config_error(e: &ConfigError) -> i32 {
    eprintln!("twofa-authz: {e}");
    EXIT_CONFIG
}

fn init_logging(cfg: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&cfg.log.level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if cfg.log.format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn serve(cfg: Config) -> i32 {
    // Validated by config::load.
    let (Ok(grpc_addr), Ok(http_addr)) = (cfg.server.grpc_socket(), cfg.server.http_socket())
    else {
        return EXIT_CONFIG;
    };
    if cfg.dev {
        warn_dev(&http_addr);
    }
    let grpc = match tokio::net::TcpListener::bind(grpc_addr).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(addr = %grpc_addr, error = %e, "cannot bind server.grpc_addr");
            return EXIT_RUNTIME;
        }
    };
    let http = match tokio::net::TcpListener::bind(http_addr).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(addr = %http_addr, error = %e, "cannot bind server.http_addr");
            return EXIT_RUNTIME;
        }
    };
    let http_local = http.local_addr().unwrap_or(http_addr);
    let state = match crate::app::AppState::build(cfg, crate::clock::system(), http_local) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            return EXIT_RUNTIME;
        }
    };
    tracing::info!(grpc = %grpc_addr, http = %http_local, "twofa-authz listening");
    match crate::app::run(state, grpc, http, shutdown_signal()).await {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!(error = %e, "stopped with an error");
            EXIT_RUNTIME
        }
    }
}

fn warn_dev(http: &SocketAddr) {
    let banner = format!(
        "\n\
         ************************************************************************\n\
         *  DEVELOPMENT MODE: NOT FOR PRODUCTION                                *\n\
         *  - try it in a browser: http://{http}/ui/\n\
         *  - tokens come from a built-in issuer: POST http://{http}/dev/token\n\
         *  - one-time codes are written to this log instead of being sent      *\n\
         *  - data in ./twofa-dev.db is encrypted with a publicly known key     *\n\
         ************************************************************************"
    );
    tracing::warn!("{banner}");
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
