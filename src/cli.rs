//! The command line of INTERFACE.md section 1. Exit codes: 0 success,
//! 1 runtime failure, 2 configuration error.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{self, Config, ConfigError};

const LONG_ABOUT: &str = "\
Second-factor enforcement for Keycloak sessions behind Envoy and nginx.

twofa-authz answers Envoy's ext_authz gRPC Check (server.grpc_addr) and the
forward-auth requests of nginx, Traefik, Caddy and Envoy's HTTP ext_authz
(server.http_addr, /authz/...), and serves the /user API with which users
enroll TOTP, verify an email or a mobile number and pass a second factor.";

const AFTER_HELP: &str = "\
Configuration (docs/configuration.md lists every key):
  Layered, each layer overriding the one before it:
    1. built-in defaults
    2. the TOML file of --config FILE (or of TWOFA_CONFIG)
    3. environment variables TWOFA_<SECTION>__<KEY>, upper case, two
       underscores between section and key: keycloak.url is
       TWOFA_KEYCLOAK__URL. Lists are comma-separated, durations are
       strings (\"30s\", \"10m\", \"12h\").
  A secret key X can be given as X_file naming a file that holds it
  (Kubernetes secret mounts), e.g. TWOFA_STORAGE__REDIS_URL_FILE.
  A TWOFA_* variable that names no key is reported at start.

Exit codes:
  0  success (serve: stopped by SIGTERM/SIGINT after draining)
  1  runtime failure (a listener cannot bind, a store is unreachable, ...)
  2  configuration error (the message names the key)

Example:
  TWOFA_KEYCLOAK__URL=https://sso.example.com TWOFA_KEYCLOAK__REALM=demo \\
    twofa-authz check-config --config /etc/twofa-authz/config.toml
  twofa-authz serve --config /etc/twofa-authz/config.toml
  twofa-authz serve --dev        # try it on one machine, nothing else needed

Logs go to stderr (log.format = \"text\" or \"json\"; log.level, or a filter
such as \"info,twofa_authz=debug\"). Troubleshooting: docs/troubleshooting.md.";

const CONFIG_HELP: &str = "TOML configuration file; unset: defaults and the environment only";

#[derive(Parser, Debug)]
#[command(
    name = "twofa-authz",
    version,
    about = "Second-factor enforcement for Keycloak sessions behind Envoy and nginx",
    long_about = LONG_ABOUT,
    after_help = AFTER_HELP
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the gRPC (Envoy ext_authz) and HTTP listeners until SIGTERM/SIGINT.
    ///
    /// On SIGTERM/SIGINT it stops accepting, finishes in-flight requests (at
    /// most 10 s) and exits 0. Applies database migrations first unless
    /// storage.auto_migrate = false. Refuses (exit 2) a `log` delivery
    /// provider for a channel in security.methods outside --dev.
    #[command(after_help = AFTER_HELP)]
    Serve {
        #[arg(long, env = "TWOFA_CONFIG", value_name = "FILE", help = CONFIG_HELP)]
        config: Option<PathBuf>,
        /// Everything embedded, for trying it on one machine. Never in production.
        ///
        /// SQLite file ./twofa-dev.db, in-memory session store, a built-in
        /// token issuer (POST /dev/token), one-time codes written to the log.
        /// Refuses to bind a non-loopback address.
        #[arg(long)]
        dev: bool,
    },
    /// Apply database migrations and exit.
    #[command(after_help = AFTER_HELP)]
    Migrate {
        #[arg(long, env = "TWOFA_CONFIG", value_name = "FILE", help = CONFIG_HELP)]
        config: Option<PathBuf>,
        /// Also rewrite every encrypted secret under the first encryption key.
        ///
        /// After adding a new key in front of security.encryption_keys; once
        /// done, the old keys can be removed.
        #[arg(long)]
        reencrypt: bool,
    },
    /// Administrator reset of one user (by Keycloak `sub`).
    ///
    /// Removes the user's TOTP, recovery codes, lockout and verified
    /// sessions, so that the user can enroll again; prints what it removed.
    #[command(after_help = AFTER_HELP)]
    ResetUser {
        /// The user's Keycloak subject (the token's `sub` claim).
        sub: String,
        #[arg(long, env = "TWOFA_CONFIG", value_name = "FILE", help = CONFIG_HELP)]
        config: Option<PathBuf>,
    },
    /// Validate the configuration and print it with secrets redacted.
    ///
    /// Exits 0, or 2 with a message naming the bad key. Applies the same
    /// checks as `serve`, and reports TWOFA_* variables that name no key.
    #[command(after_help = AFTER_HELP)]
    CheckConfig {
        #[arg(long, env = "TWOFA_CONFIG", value_name = "FILE", help = CONFIG_HELP)]
        config: Option<PathBuf>,
    },
    /// Print an `otpauth://` URI (e.g. from `POST /user/generate-totp`) as a
    /// QR code in the terminal, to scan with an authenticator app. Reads the
    /// URI from standard input when none (or `-`) is given. Needs no
    /// configuration.
    Qr {
        /// The otpauth:// URI; `-` or nothing: read it from standard input.
        uri: Option<String>,
    },
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
    if let Command::Serve { .. } | Command::CheckConfig { .. } = cli.command {
        if let Err(e) = config::check_delivery(&cfg) {
            return config_error(&e);
        }
    }
    let env_warnings = config::keys::env_warnings(std::env::vars());
    if let Command::CheckConfig { .. } = cli.command {
        for w in &env_warnings {
            eprintln!("twofa-authz: warning: {w}");
        }
        print!("{}", cfg.redacted_toml());
        return 0;
    }
    // The runtime first: the OTLP exporter's gRPC client is spawned on it.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build();
    let telemetry = crate::telemetry::init(&cfg, rt.as_ref().ok());
    for w in &env_warnings {
        tracing::warn!("{w}");
    }
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return EXIT_RUNTIME;
        }
    };
    let code = rt.block_on(async move {
        match cli.command {
            Command::Serve { .. } => serve(cfg).await,
            Command::Migrate { reencrypt, .. } => crate::admin::migrate(cfg, reencrypt).await,
            Command::ResetUser { sub, .. } => crate::admin::reset_user(cfg, &sub).await,
            Command::CheckConfig { .. } | Command::Qr { .. } => 0,
        }
    });
    // After the graceful shutdown, before the runtime goes: the last spans.
    telemetry.shutdown();
    code
}

fn config_error(e: &ConfigError) -> i32 {
    eprintln!("twofa-authz: {e}");
    EXIT_CONFIG
}

async fn serve(cfg: Config) -> i32 {
    // Validated by config::load.
    let (Ok(grpc_addr), Ok(http_addr), Ok(metrics_addr)) = (
        cfg.server.grpc_socket(),
        cfg.server.http_socket(),
        cfg.server.metrics_socket(),
    ) else {
        return EXIT_CONFIG;
    };
    if cfg.dev {
        warn_dev(&http_addr);
    }
    let shutdown = shutdown_signal();
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
    let metrics = match metrics_addr {
        None => None,
        Some(addr) => match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::error!(addr = %addr, error = %e, "cannot bind server.metrics_addr");
                return EXIT_RUNTIME;
            }
        },
    };
    let metrics_local = metrics.as_ref().and_then(|l| l.local_addr().ok());
    let http_local = http.local_addr().unwrap_or(http_addr);
    let state = match crate::app::AppState::build(cfg, crate::clock::system(), http_local) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            return EXIT_RUNTIME;
        }
    };
    match metrics_local {
        Some(m) => tracing::info!(
            grpc = %grpc_addr, http = %http_local, metrics = %m,
            version = env!("CARGO_PKG_VERSION"), commit = crate::metrics::BUILD_COMMIT,
            "twofa-authz listening"
        ),
        None => tracing::info!(
            grpc = %grpc_addr, http = %http_local,
            version = env!("CARGO_PKG_VERSION"), commit = crate::metrics::BUILD_COMMIT,
            "twofa-authz listening"
        ),
    }
    match crate::app::run(state, grpc, http, metrics, shutdown).await {
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

/// SIGINT or SIGTERM. The handlers are installed by this call, not when the
/// future is first polled: `serve` calls it before it binds a listener, so
/// a signal sent as soon as `/readyz` answers finds them in place instead of
/// killing the process with the default action (no graceful shutdown).
#[cfg(unix)]
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let int = signal(SignalKind::interrupt());
    let term = signal(SignalKind::terminate());
    async move {
        let wait = |s: std::io::Result<tokio::signal::unix::Signal>| async move {
            match s {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = wait(int) => {}
            _ = wait(term) => {}
        }
    }
}

#[cfg(not(unix))]
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}
