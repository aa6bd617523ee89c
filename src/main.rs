//! The `vlmtune` command line.

mod cli;

use clap::{Parser, Subcommand};
use vlmtune::backend::{dispatch, DeviceKind};

/// Fine-tune SmolVLM / Idefics3 vision-language models: SFT, DPO, LoRA/QLoRA.
#[derive(Parser, Debug)]
#[command(name = "vlmtune", version, about)]
struct Cli {
    /// Where to compute.
    #[arg(long, value_enum, default_value_t = DeviceKind::Cpu, global = true)]
    device: DeviceKind,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Answer a prompt about images with a model (prints only the generated text).
    Generate(cli::generate::GenerateArgs),
    /// Print the architecture and parameter counts of a checkpoint or preset.
    Inspect(cli::inspect::InspectArgs),
    /// Merge an adapter into its base model and save a Hugging Face checkpoint.
    Merge(cli::merge::MergeArgs),
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Generate(args) => println!("{}", dispatch(cli.device, args)??),
        Command::Inspect(args) => print!("{}", dispatch(cli.device, args)??),
        Command::Merge(args) => eprintln!("{}", dispatch(cli.device, args)??),
    }
    Ok(())
}
