// SPDX-License-Identifier: GPL-2.0

//! `conflux-emu`: the server of the Conflux device model (`serve`) and a
//! host memory bandwidth probe (`memcpy-bench`). See
//! `Documentation/accel/conflux/device.rst`, section "The server".

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

use std::{io::Write, process::ExitCode};

use conflux_emu::{
    bench,
    server::{self, counters_line, human_size, parse_size, Config, Server, READY, USAGE},
};

/// Exit status of errors at startup.
const STARTUP: u8 = 2;

fn main() -> ExitCode {
    let args: Result<Vec<String>, _> = std::env::args_os()
        .skip(1)
        .map(|a| a.into_string())
        .collect();
    let args = match args {
        Ok(a) => a,
        Err(a) => {
            eprintln!("conflux-emu: argument {a:?} is not UTF-8");
            return ExitCode::from(STARTUP);
        }
    };
    match args.split_first() {
        Some((cmd, rest)) if cmd == "serve" => serve(rest),
        Some((cmd, rest)) if cmd == "memcpy-bench" => memcpy_bench(rest),
        Some((cmd, _)) if cmd == "--help" || cmd == "-h" => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Some((cmd, _)) => {
            eprintln!("conflux-emu: unknown command {cmd:?}\n{USAGE}");
            ExitCode::from(STARTUP)
        }
        None => {
            eprintln!("{USAGE}");
            ExitCode::from(STARTUP)
        }
    }
}

fn serve(args: &[String]) -> ExitCode {
    let config = match Config::from_args(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("conflux-emu serve: {e}\n{USAGE}");
            return ExitCode::from(STARTUP);
        }
    };
    let mut server = match Server::start(config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("conflux-emu serve: {e}");
            return ExitCode::from(STARTUP);
        }
    };
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{READY}").and_then(|_| out.flush()) {
        eprintln!("conflux-emu serve: writing the ready line: {e}");
    }
    drop(out);
    let result = server.run();
    let counters = server.counters();
    // Removes the sockets.
    drop(server);
    for (i, c) in counters.iter().enumerate() {
        eprintln!("{}", counters_line(i, c));
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("conflux-emu serve: waiting for events: {e}");
            ExitCode::FAILURE
        }
    }
}

fn memcpy_bench(args: &[String]) -> ExitCode {
    let parsed = server::options(args, &["--size", "--threads", "--in"]).and_then(|o| {
        let value = |name: &str| o.iter().find(|(n, _)| n == name).map(|(_, v)| v);
        let v = value("--size").ok_or("missing option --size")?;
        let n = parse_size(v).map_err(|e| format!("--size: {e}"))?;
        let size = usize::try_from(n)
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| format!("--size: {v:?} is not a buffer size"))?;
        let threads = match value("--threads") {
            None => 1,
            Some(t) => t
                .parse::<usize>()
                .ok()
                .filter(|t| (1..=64).contains(t))
                .ok_or_else(|| format!("--threads: {t:?} is not 1 to 64"))?,
        };
        let buffers = match value("--in").map(String::as_str) {
            None | Some("private") => bench::Buffers::Private,
            Some("shared") => bench::Buffers::Shared,
            Some(other) => return Err(format!("--in: {other:?} is not private or shared")),
        };
        Ok((size, threads, buffers))
    });
    let (size, threads, buffers) = match parsed {
        Ok(p) => p,
        Err(e) => {
            eprintln!("conflux-emu memcpy-bench: {e}\n{USAGE}");
            return ExitCode::from(STARTUP);
        }
    };
    let rate = match bench::host_memcpy_parallel(size, threads, buffers) {
        Ok(rate) => rate,
        Err(e) => {
            eprintln!("conflux-emu memcpy-bench: shared memory of {size} bytes: {e}");
            return ExitCode::from(STARTUP);
        }
    };
    let mut who = match threads {
        1 => String::new(),
        n => format!(", {n} threads at once"),
    };
    if buffers == bench::Buffers::Shared {
        who.push_str(", in shared memory");
    }
    println!(
        "host memcpy {}{who}: {:.0} MB/s",
        human_size(size as u64),
        rate / 1e6
    );
    ExitCode::SUCCESS
}
