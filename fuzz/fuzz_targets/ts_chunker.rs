//! MPEG-TS chunking of an arbitrary byte stream (what an ffmpeg child writes, or garbage):
//! never panics; every chunk is whole 188-byte packets starting with the sync byte; the PSI
//! tracker and the packet accessors accept whatever the chunker lets through.
#![no_main]
use libfuzzer_sys::fuzz_target;
use overlayd::media::ts::{packets, Chunker, PsiTracker, PACKET_LEN, SYNC_BYTE};

fuzz_target!(|data: &[u8]| {
    let Some((&ppc, mut rest)) = data.split_first() else {
        return;
    };
    let Ok(mut chunker) = Chunker::new(usize::from(ppc % 12)) else {
        return;
    };
    chunker.set_cut_at_keyframe(ppc & 0x80 != 0);
    let mut psi = PsiTracker::new();
    let check = |chunk: &[u8], psi: &mut PsiTracker| {
        assert_eq!(chunk.len() % PACKET_LEN, 0, "chunk of whole packets");
        for p in packets(chunk) {
            assert_eq!(p.bytes()[0], SYNC_BYTE);
            let _ = (
                p.pid(),
                p.pcr(),
                p.payload(),
                p.pes_stream_id(),
                p.starts_keyframe(),
            );
        }
        psi.observe(chunk);
        let _ = psi.tables();
    };
    while !rest.is_empty() {
        // Feed in pieces of varying size, as reads from a pipe arrive.
        let n = (usize::from(rest[0]) * 3 + 1).min(rest.len());
        chunker.push(&rest[..n]);
        rest = &rest[n..];
        while let Some(c) = chunker.poll_chunk() {
            check(&c.payload, &mut psi);
        }
    }
    if let Some(c) = chunker.flush() {
        check(&c.payload, &mut psi);
    }
});
