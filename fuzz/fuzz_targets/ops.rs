//! The input format shared by the service targets: a list of operations
//! `[op, who, len, body...]`, where `op` picks what happens, `who` picks an address (and a
//! few flags) and `body` is the next `len` bytes (fewer at the end of the input). Not a target
//! itself: each service target includes it with `mod ops;`.

/// The operations of `data` in order: `(op, who, body)`. A tail of fewer than three bytes is
/// ignored.
pub fn ops(mut rest: &[u8]) -> impl Iterator<Item = (u8, u8, &[u8])> {
    std::iter::from_fn(move || {
        let (&[op, who, len], after) = rest.split_first_chunk::<3>()?;
        let (body, tail) = after.split_at(usize::from(len).min(after.len()));
        rest = tail;
        Some((op, who, body))
    })
}
