//! GTP-U encapsulation and decapsulation: the per-packet work of a gNB and a UPF.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;

use benches::{ipv4_packet, uplink_header};

fn gtpu(c: &mut Criterion) {
    let mut group = c.benchmark_group("gtpu");
    for size in [64usize, 1400] {
        let payload = ipv4_packet(size);
        let repr = uplink_header();
        let mut buf = vec![0u8; 2048];
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("encapsulate", size), &payload, |b, p| {
            b.iter(|| wire::gtpu::encapsulate(black_box(&repr), black_box(p), &mut buf))
        });
        let packet = wire::gtpu::to_vec(&repr, &payload).unwrap_or_default();
        group.bench_with_input(BenchmarkId::new("decapsulate", size), &packet, |b, p| {
            b.iter(|| wire::gtpu::decapsulate(black_box(p)).map(|(r, inner)| (r.teid, inner.len())))
        });
    }
    group.finish();
}

criterion_group!(benches, gtpu);
criterion_main!(benches);
