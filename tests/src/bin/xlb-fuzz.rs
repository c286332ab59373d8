//! `cargo xtask fuzz [--seconds N] [--seed S] [--steps K]`: differential fuzzing of the
//! loaded datapath against the reference model (`xlb_tests::fuzz`) for N seconds, one case
//! of K actions per seed from S on. A divergence is saved into `tests/fuzz-corpus/` (which
//! the tests replay) and ends the run with a failure; otherwise it prints what was compared.

use std::time::{Duration, Instant};

use xlb_tests::{fuzz, netns::require_root};

struct Opts {
    seconds: u64,
    seed: u64,
    steps: usize,
}

fn opts() -> Opts {
    let mut o = Opts {
        seconds: 60,
        // A different stretch of seeds each run unless one is asked for.
        seed: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs() * 1000),
        steps: 2000,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let v = it
            .next()
            .unwrap_or_else(|| usage(&format!("{a}: missing value")));
        let num = |v: &str| -> u64 {
            v.parse()
                .unwrap_or_else(|_| usage(&format!("{a}: not a number: {v}")))
        };
        match a.as_str() {
            "--seconds" => o.seconds = num(v),
            "--seed" => o.seed = num(v),
            "--steps" => o.steps = num(v) as usize,
            other => usage(&format!("unknown option {other}")),
        }
    }
    o
}

fn usage(why: &str) -> ! {
    eprintln!("xlb-fuzz: {why}\nusage: xlb-fuzz [--seconds N] [--seed S] [--steps K]");
    std::process::exit(2);
}

fn main() {
    require_root();
    let o = opts();
    let until = Instant::now() + Duration::from_secs(o.seconds);
    let started = Instant::now();
    let mut total = fuzz::Stats::default();
    let (mut cases, mut busy) = (0u64, Duration::ZERO);
    println!(
        "fuzz: {} s, cases of {} actions from seed {}",
        o.seconds, o.steps, o.seed
    );
    let mut seed = o.seed;
    while Instant::now() < until {
        let case = fuzz::generate(seed, o.steps);
        let t = Instant::now();
        match fuzz::run(&case, 50) {
            Ok(s) => {
                busy += t.elapsed();
                total.add(&s);
                cases += 1;
            }
            Err(d) => {
                let path = fuzz::save(&format!("seed-{seed}-step-{}", d.step), &d.case);
                eprintln!(
                    "fuzz: seed {seed} diverged at step {} (case saved to {}; replay: cargo test -p xlb-tests --test fuzz corpus):\n{}",
                    d.step,
                    path.display(),
                    d.what
                );
                std::process::exit(1);
            }
        }
        seed += 1;
    }
    let secs = busy.as_secs_f64().max(1e-9);
    println!(
        "fuzz: {cases} cases (seeds {}..{seed}) agreed in {:.0} s: {total}",
        o.seed,
        started.elapsed().as_secs_f64()
    );
    println!(
        "fuzz: {:.0} packets/s compared (a fresh datapath loaded for every case included)",
        total.packets as f64 / secs
    );
}
