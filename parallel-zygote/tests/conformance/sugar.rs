//! `spawn!`: locals passed by a capture list, no tuple written twice.

use libtest_mimic::Failed;
use parallel_zygote::async_core::{Parallel, Runtime};

use super::check;

pub async fn spawn_macro_passes_locals_without_a_tuple<R: Runtime>(
    parallel: Parallel<R>,
) -> Result<(), Failed> {
    let name = String::from("sum");
    let values = vec![1u64, 2, 3];
    let scale = 10u64;
    let text = parallel_zygote::spawn!(parallel, (name, values, scale => factor) || async move {
        format!("{name}={}", values.iter().sum::<u64>() * factor)
    })
    .await?;
    check(text == "sum=60", text)?;
    let count = 41u32;
    let next = parallel_zygote::spawn!(parallel, (mut count,) || async move {
        count += 1;
        count
    })
    .await?;
    check(next == 42, format!("{next}"))?;
    let empty = parallel_zygote::spawn!(parallel, () || async move { std::process::id() }).await?;
    check(empty != std::process::id(), "ran in a worker")
}
