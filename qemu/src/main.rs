//! `tether`: the runner behind `cargo run`. See `tether help`.

use std::process::ExitCode;
use tether_qemu::{bench, bench_net, bench_recovery, cli, profile, run, test_run};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // Not for users: the echo client a test runs inside its network namespace.
    if args.first().map(String::as_str) == Some("__echo-client") {
        let code = tether_qemu::net_offload::echo_client_main(&args[1..]);
        return ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    let command = match cli::parse(&args) {
        Ok(command) => command,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let result = match command {
        cli::Cli::Help => {
            print!("{}", cli::USAGE);
            Ok(0)
        }
        cli::Cli::Run(options) => run::run_interactive(&options),
        cli::Cli::Test(options) => test_run::run_all_tests(&options).map(|ok| i32::from(!ok)),
        cli::Cli::Iso { cmdline, output } => run::build_iso_command(&cmdline, output.as_deref())
            .map(|iso| {
                println!("{}", iso.display());
                0
            }),
        cli::Cli::BenchBoot {
            boots,
            verbose,
            kernel,
        } => bench::bench_boot(boots, verbose, kernel.as_deref()).map(|()| 0),
        cli::Cli::BenchNet(options) => bench_net::bench_net(&options).map(|()| 0),
        cli::Cli::BenchRecovery(options) => bench_recovery::bench_recovery(&options).map(|()| 0),
        cli::Cli::Profile(options) => profile::profile_command(&options).map(|()| 0),
    };
    match result {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(error) => {
            eprintln!("tether: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
