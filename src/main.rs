//! The `vlmtune` command line.

mod cli;

vlmtune::use_retaining_allocator!();

use clap::{CommandFactory, Parser, Subcommand};
use vlmtune::backend::{dispatch, DeviceKind};

/// Fine-tune SmolVLM / Idefics3 vision-language models: SFT, DPO, LoRA/QLoRA.
#[derive(Parser, Debug)]
#[command(name = "vlmtune", version, about)]
struct Cli {
    /// Where to compute.
    #[arg(long, value_enum, default_value_t = DeviceKind::Cpu, global = true)]
    device: DeviceKind,
    /// CPU threads for the kernels (default: `RAYON_NUM_THREADS`, else every core).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Direct preference optimisation (defaults: continue `vlmtune sft` on synthetic chart pairs).
    Dpo(cli::dpo::DpoArgs),
    /// Mean loss and answer accuracy of a model (and adapter) on a dataset.
    Eval(cli::eval::EvalArgs),
    /// Answer a prompt about images with a model (prints only the generated text).
    Generate(cli::generate::GenerateArgs),
    /// Print the architecture and parameter counts of a checkpoint or preset.
    Inspect(cli::inspect::InspectArgs),
    /// Serve the orchestrator multi-machine `sft` / `dpo` runs register with (`--master-addr`).
    Orchestrator(cli::distributed::OrchestratorArgs),
    /// Merge an adapter into its base model and save a Hugging Face checkpoint.
    Merge(cli::merge::MergeArgs),
    /// Draw a run's training and eval curves (RUN_DIR/curves.png) from its metrics.jsonl.
    Plot(cli::plot::PlotArgs),
    /// Check this build on a device against the reference fixtures (transformers, bitsandbytes,
    /// TRL numbers): logits, quantised logits, one SFT and one DPO step.
    Selftest(cli::selftest::SelftestArgs),
    /// Supervised fine-tuning (defaults: the tiny model on synthetic charts, offline).
    Sft(cli::sft::SftArgs),
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            let interrupted = matches!(
                e.downcast_ref::<vlmtune::Error>(),
                Some(vlmtune::Error::Train(
                    vlmtune::train::TrainError::Interrupted { .. }
                ))
            );
            // 130: the shell's status for a run ended by Ctrl-C.
            std::process::ExitCode::from(if interrupted { 130 } else { 1 })
        }
    }
}

fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("warn,vlmtune=info,vlmtune_train=info")
            }),
        )
        .with_writer(std::io::stderr)
        .init();
    // TRL's spelling (`--learning_rate`, `--model_name_or_path`, `--use_peft`) for sft / dpo.
    let (args, trl) = cli::trl_args::split(&Cli::command(), std::env::args_os().collect());
    let mut cli = Cli::parse_from(args);
    match &mut cli.command {
        Command::Sft(a) => a.trl = trl,
        Command::Dpo(a) => a.trl = trl,
        _ => {}
    }
    vlmtune::backend::set_cpu_threads(cli.threads)?;
    if matches!(cli.command, Command::Sft(_) | Command::Dpo(_)) {
        // Ctrl-C / SIGTERM: finish the step, checkpoint, exit; a second one exits at once.
        vlmtune::train::interrupt::install()?;
    }
    match cli.command {
        Command::Dpo(args) => {
            let config = args.job_config()?;
            let report = dispatch(cli.device, cli::dpo::DpoJob(config))??;
            println!("{}", cli::dpo::summary(&report));
        }
        Command::Eval(args) => print!("{}", dispatch(cli.device, args)??),
        Command::Generate(args) => println!("{}", dispatch(cli.device, args)??),
        Command::Inspect(args) => print!("{}", dispatch(cli.device, args)??),
        Command::Merge(args) => eprintln!("{}", dispatch(cli.device, args)??),
        Command::Orchestrator(args) => args.run()?,
        Command::Plot(args) => println!("{}", args.run()?.display()),
        Command::Selftest(args) => {
            // bf16: f32 weights, bf16 products (autocast), bf16's tolerances; any device.
            let bf16 = args.bf16;
            let job = cli::selftest::SelftestJob {
                fixtures: args.fixtures.clone(),
                options: vlmtune::selftest::Options {
                    bf16,
                    bench: args.bench || !args.bench_cases.is_empty(),
                    bench_cases: args.bench_cases.clone(),
                },
            };
            let report = dispatch(cli.device, job)??;
            args.finish(&report)?;
        }
        Command::Sft(args) => {
            let config = args.job_config()?;
            let report = dispatch(cli.device, cli::sft::SftJob(config))??;
            println!("{}", cli::sft::summary(&report));
        }
    }
    Ok(())
}
