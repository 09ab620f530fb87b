//! `baton-sim`: run seeded simulations of a pgbaton cluster and print every failing seed with
//! its trace. Exits non-zero when a seed failed.
//!
//! ```text
//! baton-sim --seeds 200                 # 200 random seeds
//! baton-sim --seed 1234                 # replay one seed, report it
//! baton-sim --seed 1234 --verbose       # ... with the whole trace
//! baton-sim --seeds 50 --seed 1000      # seeds 1000..1049
//! options: --nodes N (3)  --rounds N (3)  --unsafe-faults  --broken steal|skip-sync  --jobs N (2)
//!          --assume-fix fencer   (emulate a proposed fix, to look for bugs behind it)
//!          --allow-known         (violations diagnosed as an open finding do not fail)
//! ```

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use baton_sim::{Broken, Options, Outcome, run};

struct Args {
    allow_known: bool,
    seeds: u64,
    first: Option<u64>,
    verbose: bool,
    jobs: usize,
    opts: Options,
}

fn usage() -> ! {
    eprintln!(
        "usage: baton-sim [--seeds N] [--seed S] [--nodes N] [--rounds N] [--unsafe-faults] [--broken steal|skip-sync] [--assume-fix fencer] [--allow-known] [--jobs N] [--verbose]"
    );
    std::process::exit(2)
}

fn parse() -> Args {
    let mut args = Args {
        allow_known: false,
        seeds: 1,
        first: None,
        verbose: false,
        jobs: 2,
        opts: Options::default(),
    };
    let mut seeds_given = false;
    let mut it = std::env::args().skip(1);
    let num = |it: &mut dyn Iterator<Item = String>| -> u64 {
        it.next()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| usage())
    };
    while let Some(a) = it.next() {
        match a.as_str() {
            "--seeds" => {
                args.seeds = num(&mut it);
                seeds_given = true;
            }
            "--seed" => args.first = Some(num(&mut it)),
            "--nodes" => args.opts.nodes = num(&mut it) as usize,
            "--rounds" => args.opts.rounds = num(&mut it) as usize,
            "--jobs" => args.jobs = (num(&mut it) as usize).max(1),
            "--unsafe-faults" => args.opts.unsafe_faults = true,
            "--broken" => match it.next().as_deref() {
                Some("steal") => args.opts.broken = Some(Broken::Steal),
                Some("skip-sync") => args.opts.broken = Some(Broken::SkipSyncCheck),
                _ => usage(),
            },
            "--assume-fix" => match it.next().as_deref() {
                Some("fencer") => args.opts.fixes.keep_fencer_armed_without_dcs = true,
                _ => usage(),
            },
            "--allow-known" => args.allow_known = true,
            "--verbose" | "-v" => args.verbose = true,
            _ => usage(),
        }
    }
    if !seeds_given && args.first.is_none() {
        args.seeds = 20;
    }
    args
}

fn main() -> ExitCode {
    let args = parse();
    let first = args.first.unwrap_or_else(|| {
        // Only picks which seeds to try; the runs themselves never read the wall clock.
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        t.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 16
    });
    let seeds: Vec<u64> = (0..args.seeds).map(|k| first.wrapping_add(k)).collect();
    let single = seeds.len() == 1;
    let next = AtomicUsize::new(0);
    let failed: Mutex<Vec<u64>> = Mutex::new(Vec::new());
    let known: Mutex<BTreeMap<String, Vec<u64>>> = Mutex::new(BTreeMap::new());
    let slowest: Mutex<Duration> = Mutex::new(Duration::ZERO);
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..args.jobs.min(seeds.len()) {
            s.spawn(|| {
                loop {
                    let k = next.fetch_add(1, Ordering::SeqCst);
                    let Some(&seed) = seeds.get(k) else { return };
                    let t = Instant::now();
                    let out: Outcome = run(seed, &args.opts);
                    let took = t.elapsed();
                    let tolerated = !out.ok() && args.allow_known && out.only_known();
                    if (!out.ok() && !tolerated) || single {
                        let tail = if args.verbose { 0 } else { 300 };
                        println!("{}", out.report(tail));
                    }
                    for v in &out.violations {
                        if let Some(f) = v.finding {
                            lock(&known).entry(format!("{f:?}")).or_default().push(seed);
                        }
                    }
                    let conv = out.stats.convergence.iter().max().copied().unwrap_or_default();
                    {
                        let mut m = lock(&slowest);
                        *m = (*m).max(conv);
                    }
                    if out.ok() || tolerated {
                        println!(
                            "seed {seed}: {} ({:.0} virtual s in {:.2} s; {}; {} writes, {} under sync replication, {} lost to async failover, {} promotions, slowest convergence {:.1} s; trace {:016x})",
                            if out.ok() { "ok" } else { "known finding" },
                            out.stats.virtual_time.as_secs_f64(),
                            took.as_secs_f64(),
                            out.params.sync.describe(),
                            out.stats.acked,
                            out.stats.protected,
                            out.stats.lost,
                            out.stats.promotions,
                            conv.as_secs_f64(),
                            out.trace_hash
                        );
                    } else {
                        println!(
                            "seed {seed}: FAILED (trace {:016x}; replay: baton-sim --seed {seed}{})",
                            out.trace_hash,
                            replay_flags(&args)
                        );
                        lock(&failed).push(seed);
                    }
                }
            });
        }
    });
    let mut failed = failed.into_inner().unwrap_or_else(|p| p.into_inner());
    failed.sort_unstable();
    for (finding, mut hit) in known.into_inner().unwrap_or_else(|p| p.into_inner()) {
        hit.sort_unstable();
        println!("known finding {finding}: {} seeds {hit:?}", hit.len());
    }
    println!(
        "slowest convergence after a heal: {:.1} s",
        lock(&slowest).as_secs_f64()
    );
    println!(
        "{} seeds in {:.1} s: {} passed, {} failed{}",
        seeds.len(),
        started.elapsed().as_secs_f64(),
        seeds.len() - failed.len(),
        failed.len(),
        if failed.is_empty() {
            String::new()
        } else {
            format!(" (seeds {failed:?})")
        }
    );
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn replay_flags(args: &Args) -> String {
    let mut out = String::new();
    if args.opts.nodes != 3 {
        out.push_str(&format!(" --nodes {}", args.opts.nodes));
    }
    if args.opts.rounds != 3 {
        out.push_str(&format!(" --rounds {}", args.opts.rounds));
    }
    if args.opts.unsafe_faults {
        out.push_str(" --unsafe-faults");
    }
    match args.opts.broken {
        Some(Broken::Steal) => out.push_str(" --broken steal"),
        Some(Broken::SkipSyncCheck) => out.push_str(" --broken skip-sync"),
        None => {}
    }
    if args.allow_known {
        out.push_str(" --allow-known");
    }
    if args.opts.fixes.keep_fencer_armed_without_dcs {
        out.push_str(" --assume-fix fencer");
    }
    out
}
