//! The `eio` command line: parses flags and configuration files, then calls the library.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Rust ignores SIGPIPE, so printing into a closed pipe (`eio ... --list | head`) would panic;
    // end quietly instead, as Unix tools do.
    #[cfg(target_os = "linux")]
    // SAFETY: restoring a signal's default action at startup, before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    report_out_of_memory_as_an_error();
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// libtorch reports a failed allocation as an error, which tch's infallible tensor calls turn
/// into a panic. Running out of memory is a matter of sizes (batch, images), not a bug: say so
/// in one `error:` line and exit 1. Every other panic keeps Rust's report.
fn report_out_of_memory_as_an_error() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info.payload_as_str().unwrap_or("");
        match out_of_memory(msg) {
            Some(what) => {
                eprintln!("error: out of memory: {what}; a smaller --batch-size (or fewer images) needs less");
                std::process::exit(1);
            }
            None => default(info),
        }
    }));
}

/// What ran out, from libtorch's message, when `msg` is an allocation failure.
fn out_of_memory(msg: &str) -> Option<String> {
    if let Some(rest) = msg.split("you tried to allocate ").nth(1) {
        let bytes: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let gib = bytes.parse::<f64>().ok()? / (1u64 << 30) as f64;
        return Some(format!("the CPU could not allocate {gib:.1} GiB"));
    }
    if !msg.contains("CUDA out of memory") {
        return None;
    }
    let size = msg.split("Tried to allocate ").nth(1).and_then(|r| Some(&r[..r.find("iB")? + 2]));
    Some(size.map_or("the GPU ran out".into(), |s| format!("the GPU could not allocate {s}")))
}
