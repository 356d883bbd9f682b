//! The user plane's per-packet work without sockets, through the functions the data paths use:
//!
//! * UPF uplink: a G-PDU from the gNB — decapsulate, PDR by TEID, FAR (to N6), counted
//!   (`UpfState::on_gtpu`, `sent`).
//! * UPF downlink: a G-PDU from an IAP over N9 — decapsulate, PDR by TEID, FAR with Outer Header
//!   Creation, re-encapsulate with the gNB's TEID and the QFI (`encapsulate_downlink`), counted.
//!   In this testbed the UPF's downlink PDR matches the N9 TEID, not the UE address (see
//!   ARCHITECTURE.md, "Downlink (Optimal Routing)"): the UE address is looked up by the IAP, so
//! * IAP downlink: an IP packet from the DN — the UE by destination address, the serving UPF's
//!   tunnel from the location cache, encapsulate (`LocationCache::route`, `encapsulate_downlink`).
//!
//! A downlink packet at its first site costs the IAP step plus the UPF downlink step.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;

use benches::{
    downlink_gpdu, downlink_ipv4_packet, iap_packet, iap_with_location, upf_packet,
    upf_with_session, uplink_gpdu,
};

fn upf(c: &mut Criterion) {
    let mut group = c.benchmark_group("upf");
    let mut upf = upf_with_session().unwrap_or_else(|e| panic!("upf: {e}"));
    let mut iap = iap_with_location();
    let mut out = vec![0u8; 2048];
    for size in [64usize, 1400] {
        group.throughput(Throughput::Bytes(size as u64));
        let up = uplink_gpdu(size);
        assert_eq!(upf_packet(&mut upf, &up, &mut out), size, "uplink to n6");
        group.bench_with_input(BenchmarkId::new("uplink g-pdu", size), &up, |b, p| {
            b.iter(|| upf_packet(&mut upf, black_box(p), &mut out))
        });
        let down = downlink_gpdu(size);
        assert!(
            upf_packet(&mut upf, &down, &mut out) > size,
            "downlink to the gnb"
        );
        group.bench_with_input(BenchmarkId::new("downlink g-pdu", size), &down, |b, p| {
            b.iter(|| upf_packet(&mut upf, black_box(p), &mut out))
        });
        let ip = downlink_ipv4_packet(size);
        assert!(iap_packet(&mut iap, &ip, &mut out) > size, "iap to the upf");
        group.bench_with_input(BenchmarkId::new("iap downlink ip", size), &ip, |b, p| {
            b.iter(|| iap_packet(&mut iap, black_box(p), &mut out))
        });
    }
    group.finish();
}

criterion_group!(benches, upf);
criterion_main!(benches);
