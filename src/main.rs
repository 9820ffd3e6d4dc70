//! `zingqueue`: the one binary. Every subcommand takes the same configuration (flags with
//! environment twins) and resolves where the data lives the same way (`infra::config`).
//!
//! Layout: `cli` (the clap definitions), `commands/` (one file per subcommand), `bench/` (the
//! `bench` subcommands and the raw ceilings they are measured against), `http` (the client
//! connection to the API).

mod bench;
mod cli;
mod commands;
mod http;

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = cli::Cli::parse();
    infra::telemetry::init();
    // Before anything records: metrics recorded earlier would be lost.
    infra::metrics::install();
    match cli.command {
        cli::Command::Up(args) => commands::up::run(&cli.global, args).await,
        cli::Command::Migrate => commands::migrate::run(&cli.global).await,
        cli::Command::Run {
            component: cli::Component::Relay,
        } => commands::relay::run(&cli.global).await,
        cli::Command::Run {
            component: cli::Component::Api,
        } => commands::api::run(&cli.global).await,
        cli::Command::Run { component } => commands::services::run(&cli.global, component).await,
        cli::Command::Dlq(command) => commands::dlq::run(&cli.global, command).await,
        cli::Command::Replay(args) => commands::replay::run(&cli.global, args).await,
        cli::Command::DevBroker => commands::dev_broker::run(&cli.global).await,
        cli::Command::Bench(cli::BenchCommand::Store(args)) => bench::store::run(args).await,
        cli::Command::Bench(cli::BenchCommand::Relay(args)) => bench::relay::run(args).await,
        cli::Command::Bench(cli::BenchCommand::Api(args)) => bench::api::run(args).await,
        cli::Command::Bench(cli::BenchCommand::Replay(args)) => bench::replay::run(args).await,
        cli::Command::Bench(cli::BenchCommand::Chaos(args)) => bench::chaos::run(&args),
        cli::Command::Bench(cli::BenchCommand::Sale(args)) => {
            bench::sale::run(&cli.global, args).await
        }
    }
}
