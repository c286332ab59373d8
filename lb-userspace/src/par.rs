//! Order-preserving parallel map over a slice on scoped threads (YAML parsing and Maglev
//! tables: the two CPU-heavy steps of a full sync).

/// `items.iter().map(f)` on up to every CPU, one thread per `min_per_thread` items at most;
/// results in input order. A panicking worker loses only its own chunk's results.
pub fn par_map<T: Sync, R: Send>(
    items: &[T],
    min_per_thread: usize,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    let threads = std::thread::available_parallelism()
        .map_or(1, std::num::NonZero::get)
        .min(items.len().div_ceil(min_per_thread.max(1)).max(1));
    if threads <= 1 {
        return items.iter().map(f).collect();
    }
    let per = items.len().div_ceil(threads);
    let f = &f;
    std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .chunks(per)
            .map(|chunk| scope.spawn(move || chunk.iter().map(f).collect::<Vec<_>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn keeps_the_input_order() {
        let v: Vec<u32> = (0..1000).collect();
        assert_eq!(
            super::par_map(&v, 7, |x| x * 2),
            v.iter().map(|x| x * 2).collect::<Vec<_>>()
        );
    }
}
