//! What the loom model files share.

/// Runs `f` under loom with a preemption bound of 2 unless `LOOM_MAX_PREEMPTIONS` sets one.
pub fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(2);
    }
    builder.check(f);
}
