//! Differential fuzzing of the datapath against the reference model (`xlb_tests::fuzz`):
//! seeded runs, the same actions on every machine, and every case that once diverged,
//! replayed. Longer runs: `cargo xtask fuzz --seconds N`.

use xlb_tests::fuzz;

/// Seeded runs: each a fresh datapath and model, the same actions every time.
#[test]
fn seeded_runs_agree_with_the_model() {
    let mut total = fuzz::Stats::default();
    for seed in 1..=3u64 {
        let case = fuzz::generate(seed, 1500);
        match fuzz::run(&case, 25) {
            Ok(s) => total.add(&s),
            Err(d) => {
                let path = fuzz::save(&format!("seed-{seed}-step-{}", d.step), &d.case);
                panic!(
                    "seed {seed}: step {} diverged (case saved to {}):\n{}",
                    d.step,
                    path.display(),
                    d.what
                );
            }
        }
    }
    eprintln!("fuzz: {total}");
    // A run that translated nothing compared nothing worth comparing.
    assert!(
        total.rewritten * 10 > total.packets,
        "too few translated: {total}"
    );
    assert!(total.dropped > 0 && total.max_entries > 20, "{total}");
}

/// Every case that once diverged agrees now.
#[test]
fn the_corpus_agrees_with_the_model() {
    for (name, case) in fuzz::corpus() {
        if let Err(d) = fuzz::run(&case, 1) {
            panic!("{name}: step {} diverged:\n{}", d.step, d.what);
        }
    }
}
