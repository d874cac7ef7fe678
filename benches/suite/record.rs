//! The record layer alone: AES-256-GCM seal + open of one record in a timed loop on one core,
//! at 1 KiB, 16 KiB and 64 KiB. The daemon's Sealer / Opener (src/crypto.rs, `ring`) side by
//! side with the first build's cipher, the `aes-gcm` crate, driven the way the first build
//! drove it (in place, detached tag, same nonce layout): the baseline, measured in the same run.

use std::hint::black_box;
use std::time::{Duration, Instant};

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce, Tag};
use bytes::BytesMut;
use overlayd::crypto::{Handshake, Opener, Sealer, Side, TAG_LEN};
use overlayd::keyfile::Psk;

use crate::report::{f2, median, Report, Table};
use crate::Opts;

/// A connected (sealer, opener) pair: what the initiator seals, the responder opens.
fn pair() -> (Sealer, Opener) {
    let psk = Psk::generate();
    let mut i = Handshake::new(Side::Initiator, &psk, [1; 32]);
    let mut r = Handshake::new(Side::Responder, &psk, [2; 32]);
    let fi = i.handle_hello(&r.hello()).unwrap();
    let fr = r.handle_hello(&i.hello()).unwrap();
    let (seal, _) = i.handle_finished(fr).unwrap();
    let (_, open) = r.handle_finished(fi).unwrap();
    (seal, open)
}

/// One record layer under test: seal then open `buf` in place.
trait Layer {
    fn seal(&mut self, buf: &mut BytesMut);
    fn open(&mut self, buf: &mut BytesMut);
}

impl Layer for (Sealer, Opener) {
    fn seal(&mut self, buf: &mut BytesMut) {
        self.0.seal(buf).unwrap();
    }
    fn open(&mut self, buf: &mut BytesMut) {
        self.1.open(buf).unwrap();
    }
}

/// The first build's record layer (aes-gcm crate), kept here as the baseline only.
struct AesGcmLayer {
    cipher: Aes256Gcm,
    seal_seq: u64,
    open_seq: u64,
}

fn nonce(seq: u64) -> Nonce<aes_gcm::aead::consts::U12> {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&seq.to_be_bytes());
    n.into()
}

impl Layer for AesGcmLayer {
    fn seal(&mut self, buf: &mut BytesMut) {
        let tag = self
            .cipher
            .encrypt_in_place_detached(&nonce(self.seal_seq), &[], buf)
            .unwrap();
        buf.extend_from_slice(&tag);
        self.seal_seq += 1;
    }
    fn open(&mut self, buf: &mut BytesMut) {
        let body = buf.len() - TAG_LEN;
        let (b, t) = buf.split_at_mut(body);
        self.cipher
            .decrypt_in_place_detached(&nonce(self.open_seq), &[], b, Tag::from_slice(t))
            .unwrap();
        buf.truncate(body);
        self.open_seq += 1;
    }
}

/// MB/s of plaintext (seal MB/s, open MB/s, seal+open MB/s) over about `dur`.
fn measure(layer: &mut dyn Layer, size: usize, dur: Duration) -> (f64, f64, f64) {
    let mut buf = BytesMut::with_capacity(size + TAG_LEN);
    let (mut seal_t, mut open_t) = (Duration::ZERO, Duration::ZERO);
    let mut n = 0u64;
    let start = Instant::now();
    while start.elapsed() < dur {
        for _ in 0..16 {
            buf.clear();
            buf.resize(size, 0x5a);
            let t0 = Instant::now();
            layer.seal(black_box(&mut buf));
            let t1 = Instant::now();
            layer.open(black_box(&mut buf));
            let t2 = Instant::now();
            seal_t += t1 - t0;
            open_t += t2 - t1;
            n += 1;
        }
    }
    let mb = (n * size as u64) as f64 / 1e6;
    (
        mb / seal_t.as_secs_f64(),
        mb / open_t.as_secs_f64(),
        mb / (seal_t + open_t).as_secs_f64(),
    )
}

pub fn run(opts: &Opts, rep: &mut Report) {
    rep.start("record layer alone");
    let (runs, dur) = if opts.quick {
        (3, Duration::from_millis(300))
    } else {
        (7, Duration::from_millis(700))
    };
    let mut t = Table::new(
        "Record layer alone (AES-256-GCM): ring (the daemon) vs aes-gcm (baseline), one core",
        "a relay opens and reseals every byte, so seal+open must reach >= 1000 MB/s per core for \
         the relay goal",
        &format!(
            "Timed loop (black_box) of seal then open of one record, {runs} runs of {} ms per \
             cipher and size (alternating), median MB/s of plaintext. ring: the daemon's Sealer / \
             Opener (src/crypto.rs). aes-gcm 0.10: the first build's record layer, same nonce \
             layout and in-place detached tag, kept in the bench as the baseline \
             (tests/crypto_golden.rs proves both produce identical records).",
            dur.as_millis()
        ),
        &[
            "record",
            "cipher",
            "seal MB/s",
            "open MB/s",
            "seal+open MB/s",
            "ratio to aes-gcm",
        ],
    );
    let mut worst = f64::INFINITY;
    let mut worst_ratio = f64::INFINITY;
    for (label, size) in [
        ("1 KiB", 1024),
        ("16 KiB", 16 * 1024),
        ("64 KiB", 64 * 1024),
    ] {
        let mut ring_rs = Vec::new();
        let mut base_rs = Vec::new();
        for _ in 0..runs {
            ring_rs.push(measure(&mut pair(), size, dur));
            let mut base = AesGcmLayer {
                cipher: Aes256Gcm::new(&[9u8; 32].into()),
                seal_seq: 1,
                open_seq: 1,
            };
            base_rs.push(measure(&mut base, size, dur));
        }
        let m = |rs: &[(f64, f64, f64)], f: fn(&(f64, f64, f64)) -> f64| {
            median(&rs.iter().map(f).collect::<Vec<_>>())
        };
        let ring_both = m(&ring_rs, |r| r.2);
        let base_both = m(&base_rs, |r| r.2);
        worst = worst.min(ring_both);
        worst_ratio = worst_ratio.min(ring_both / base_both);
        for (name, rs, both) in [
            ("ring (daemon)", &ring_rs, ring_both),
            ("aes-gcm (baseline)", &base_rs, base_both),
        ] {
            t.row(vec![
                label.into(),
                name.into(),
                format!("{:.0}", m(rs, |r| r.0)),
                format!("{:.0}", m(rs, |r| r.1)),
                format!("{both:.0}"),
                f2(both / base_both),
            ]);
        }
    }
    t.note(format!(
        "ring is {worst_ratio:.1}x aes-gcm at worst over the sizes (seal+open). The daemon uses \
         ring; aes-gcm stays only as a dev-dependency (this baseline and the golden test); the \
         algorithm, keys, nonces and records are the same."
    ));
    t.verdict(
        worst >= 1000.0,
        format!("ring seal+open {worst:.0} MB/s at worst over the sizes (goal 1000 MB/s)."),
    );
    rep.add(t);
}
