//! PFCP (N4) encode and decode of the messages the SMF sends a UPF — session establishment with its
//! two PDRs and FARs, the path switch's modification (Update FAR with SNDEM), a heartbeat — built
//! by the SMF's own code, with the wire crate's `Message::to_vec` / `Message::parse`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;

use benches::pfcp_messages;
use wire::pfcp::Message;

fn pfcp(c: &mut Criterion) {
    let mut group = c.benchmark_group("pfcp");
    for (what, message) in pfcp_messages() {
        let bytes = message
            .to_vec()
            .unwrap_or_else(|e| panic!("encode {what}: {e}"));
        // Checked once before measuring: decoding gives the message back.
        match Message::parse(&bytes) {
            Ok(parsed) => assert_eq!(parsed, message, "{what} round trip"),
            Err(e) => panic!("decode {what}: {e}"),
        }
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        group.bench_function(format!("encode {what} ({} B)", bytes.len()), |b| {
            b.iter(|| black_box(&message).to_vec().map(|v| v.len()))
        });
        group.bench_function(format!("decode {what} ({} B)", bytes.len()), |b| {
            b.iter(|| Message::parse(black_box(&bytes)).is_ok())
        });
    }
    group.finish();
}

criterion_group!(benches, pfcp);
criterion_main!(benches);
