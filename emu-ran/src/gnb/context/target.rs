//! The target side of an Xn handover: admitting the HandoverRequest (a context waiting for the
//! UE and a forwarding tunnel), the UE's HandoverConfirm, the path switch at the SMF and the UE
//! Context Release to the source; meanwhile the downlink ordering: forwarded packets first, the
//! new path's after the End Marker (or [`NEW_PATH_HOLD`]).

use std::collections::VecDeque;
use std::net::SocketAddr;

use model::ran::n2::{PathSwitchAck, PathSwitchRequest};
use model::ran::xn::{HandoverRequest, HandoverRequestAck, UeContextRelease};
use model::ran::{TimelineStep, TunnelEndpoint};
use tokio::time::{Duration, Instant};

use super::{
    stamp, step, unix_at, us, Action, Arrival, CallFailure, Failure, GnbCore, Phase, RequestId,
    TeidRole, Timer, UeContext, AWAITING_UE_GUARD, FORWARDING_TUNNEL_LIFETIME, MAX_BUFFERED,
    NEW_PATH_HOLD, PATH_SWITCH_GUARD, PATH_SWITCH_RETRY_FIRST, PATH_SWITCH_RETRY_MAX,
};

impl GnbCore {
    pub(super) fn on_handover_request(
        &mut self,
        now: Instant,
        id: RequestId,
        req: HandoverRequest,
        out: &mut Vec<Action>,
    ) {
        let radio = self.config.radio;
        let xn = self.config.xn_addr;
        if let Some(ctx) = self.contexts.get(&req.supi) {
            match (&ctx.phase, &ctx.arrival) {
                (Phase::AwaitingUe, Some(a)) if a.source_gnb == req.source_gnb => {
                    // A retried request: the same answer.
                    out.push(Action::AnswerHandoverRequest {
                        id,
                        result: Ok(HandoverRequestAck {
                            radio_id: ctx.radio_id,
                            radio,
                            forwarding_tunnel: TunnelEndpoint {
                                ipv4: xn,
                                teid: a.fwd_teid,
                            },
                        }),
                    });
                    return;
                }
                (Phase::Forwarding(ho), _) if ho.released => {
                    // We handed it out and it comes straight back: the old context goes.
                }
                (phase, _) => {
                    out.push(Action::AnswerHandoverRequest {
                        id,
                        result: Err(Failure::new(
                            409,
                            format!(
                                "ue {} is already {} at {}",
                                req.supi,
                                phase.name(),
                                self.config.name
                            ),
                        )),
                    });
                    return;
                }
            }
        }
        if !self.config.peers.contains_key(&req.source_gnb) {
            tracing::warn!(
                source = req.source_gnb,
                "handover request from a gnb that is not a peer"
            );
        }
        let fwd_teid = self.alloc_teid();
        let supi = req.supi.clone();
        let ctx = self.new_context(&supi, req.ue_name.clone(), Phase::AwaitingUe);
        ctx.ue_ipv4 = Some(req.ue_ipv4);
        ctx.qfi = req.qfi;
        ctx.upf_tunnel = Some(req.upf_tunnel);
        ctx.arrival = Some(Arrival {
            source_gnb: req.source_gnb.clone(),
            fwd_teid,
            started: now,
            timeline: vec![step(
                format!("handover request from {} admitted", req.source_gnb),
                Duration::ZERO,
                Duration::ZERO,
            )],
            fwd_pending: VecDeque::new(),
            new_pending: VecDeque::new(),
            end_marker: false,
            hold_expired: false,
            hold_started: false,
            path_switch_sent: None,
            path_switch_tries: 0,
            dropped: 0,
        });
        let (radio_id, epoch) = (ctx.radio_id, ctx.epoch);
        self.by_teid
            .insert(fwd_teid, (supi.clone(), TeidRole::Forwarding));
        tracing::info!(
            supi,
            source = req.source_gnb,
            radio_id,
            fwd_teid,
            "handover prepared"
        );
        out.push(Action::AnswerHandoverRequest {
            id,
            result: Ok(HandoverRequestAck {
                radio_id,
                radio,
                forwarding_tunnel: TunnelEndpoint {
                    ipv4: xn,
                    teid: fwd_teid,
                },
            }),
        });
        out.push(Action::StartTimer {
            supi,
            epoch,
            timer: Timer::AwaitingUe,
            at: now + AWAITING_UE_GUARD,
        });
    }

    pub(super) fn on_confirm(
        &mut self,
        now: Instant,
        from: SocketAddr,
        supi: &str,
        radio_id: u16,
        out: &mut Vec<Action>,
    ) {
        let n3 = self.config.n3_addr;
        let gnb = self.config.name.clone();
        let Some(ctx) = self.contexts.get_mut(supi) else {
            self.counters.unexpected_rrc += 1;
            tracing::warn!(supi, "handover confirm for an unknown ue");
            return;
        };
        if ctx.radio_id != radio_id {
            self.counters.unexpected_rrc += 1;
            tracing::warn!(
                supi,
                radio_id,
                expected = ctx.radio_id,
                "handover confirm with a wrong radio id"
            );
            return;
        }
        match ctx.phase {
            Phase::AwaitingUe => {}
            Phase::PathSwitching | Phase::Connected => {
                // A repeated confirm: the UE's address may have changed, nothing else.
                ctx.ue_radio = Some(from);
                return;
            }
            _ => {
                self.counters.unexpected_rrc += 1;
                return;
            }
        }
        ctx.ue_radio = Some(from);
        ctx.phase = Phase::PathSwitching;
        let (Some(arrival), Some(ue_ipv4)) = (ctx.arrival.as_mut(), ctx.ue_ipv4) else {
            return;
        };
        let at = now - arrival.started;
        arrival.timeline.push(step(
            "ue arrived at target (handover confirm)",
            at,
            Duration::ZERO,
        ));
        let buffered = arrival.fwd_pending.len();
        arrival.path_switch_sent = Some(now);
        arrival.path_switch_tries = 1;
        arrival.timeline.push(step(
            format!("forwarded packets buffered before arrival delivered: {buffered}"),
            at,
            Duration::ZERO,
        ));
        tracing::info!(supi, %from, buffered, "ue arrived; path switch");
        let request = Self::path_switch_request(&gnb, n3, ctx, ue_ipv4);
        let epoch = ctx.epoch;
        self.flush(supi, out);
        out.push(Action::PathSwitch {
            supi: supi.to_owned(),
            epoch,
            request,
        });
    }

    /// The PathSwitchRequest of `ctx` (the same at every try).
    fn path_switch_request(
        gnb: &str,
        n3: std::net::Ipv4Addr,
        ctx: &UeContext,
        ue_ipv4: std::net::Ipv4Addr,
    ) -> PathSwitchRequest {
        PathSwitchRequest {
            supi: ctx.supi.clone(),
            ue_ipv4,
            gnb: gnb.to_owned(),
            gnb_tunnel: TunnelEndpoint {
                ipv4: n3,
                teid: ctx.dl_teid,
            },
        }
    }

    /// Target: the backoff after a try the SMF did not answer is over: the same request again.
    pub(super) fn on_path_switch_retry(&mut self, supi: &str, out: &mut Vec<Action>) {
        let (gnb, n3) = (self.config.name.clone(), self.config.n3_addr);
        let Some(ctx) = self.contexts.get_mut(supi) else {
            return;
        };
        if ctx.phase != Phase::PathSwitching {
            return;
        }
        let (Some(ue_ipv4), Some(a)) = (ctx.ue_ipv4, ctx.arrival.as_mut()) else {
            return;
        };
        a.path_switch_tries += 1;
        let tries = a.path_switch_tries;
        tracing::info!(supi, tries, "path switch sent again");
        let request = Self::path_switch_request(&gnb, n3, ctx, ue_ipv4);
        out.push(Action::PathSwitch {
            supi: supi.to_owned(),
            epoch: ctx.epoch,
            request,
        });
    }

    /// The wait before try `tries + 1`.
    fn path_switch_backoff(tries: u32) -> Duration {
        let doublings = tries.saturating_sub(1).min(16);
        (PATH_SWITCH_RETRY_FIRST * 2u32.pow(doublings)).min(PATH_SWITCH_RETRY_MAX)
    }

    /// Target: delivers whatever the ordering rules allow.
    pub(super) fn flush(&mut self, supi: &str, out: &mut Vec<Action>) {
        let Some(ctx) = self.contexts.get_mut(supi) else {
            return;
        };
        if ctx.ue_radio.is_none() || ctx.phase == Phase::AwaitingUe {
            return;
        }
        let Some(mut arrival) = ctx.arrival.take() else {
            return;
        };
        while let Some(p) = arrival.fwd_pending.pop_front() {
            Self::deliver(&mut self.counters, ctx, &p, out);
        }
        if arrival.end_marker || arrival.hold_expired {
            while let Some(p) = arrival.new_pending.pop_front() {
                Self::deliver(&mut self.counters, ctx, &p, out);
            }
        }
        ctx.arrival = Some(arrival);
    }

    pub(super) fn buffered(a: &Arrival) -> usize {
        a.fwd_pending.len() + a.new_pending.len()
    }

    /// Target: downlink from the new path before the old one ended (End Marker, or the hold
    /// timer) or before the UE is reachable waits, bounded by [`MAX_BUFFERED`].
    pub(super) fn hold_new_path(
        &mut self,
        now: Instant,
        supi: &str,
        payload: Vec<u8>,
        out: &mut Vec<Action>,
    ) {
        let Some(ctx) = self.contexts.get_mut(supi) else {
            return;
        };
        let epoch = ctx.epoch;
        let Some(a) = ctx.arrival.as_mut() else {
            return;
        };
        if Self::buffered(a) >= MAX_BUFFERED {
            self.counters.downlink_dropped += 1;
            return;
        }
        a.new_pending.push_back(payload);
        if !a.hold_started {
            a.hold_started = true;
            out.push(Action::StartTimer {
                supi: supi.to_owned(),
                epoch,
                timer: Timer::NewPathHold,
                at: now + NEW_PATH_HOLD,
            });
        }
    }

    pub(super) fn on_forwarded(
        &mut self,
        supi: &str,
        end_marker: bool,
        payload: Vec<u8>,
        out: &mut Vec<Action>,
    ) {
        let Some(ctx) = self.contexts.get_mut(supi) else {
            return;
        };
        let Some(a) = ctx.arrival.as_mut() else {
            return;
        };
        if end_marker {
            a.end_marker = true;
            tracing::info!(supi, "end marker arrived over xn-u");
            self.flush(supi, out);
            // With the path switched and the old path ended, the forwarding tunnel is done.
            if let Some(ctx) = self.contexts.get_mut(supi) {
                if ctx.phase == Phase::Connected {
                    if let Some(a) = ctx.arrival.take() {
                        self.by_teid.remove(&a.fwd_teid);
                    }
                }
            }
            return;
        }
        if ctx.phase == Phase::AwaitingUe || ctx.ue_radio.is_none() {
            if Self::buffered(a) >= MAX_BUFFERED {
                a.dropped += 1;
                self.counters.downlink_dropped += 1;
                return;
            }
            a.fwd_pending.push_back(payload);
            return;
        }
        Self::deliver(&mut self.counters, ctx, &payload, out);
    }

    pub(super) fn on_path_switched(
        &mut self,
        now: Instant,
        supi: &str,
        epoch: u64,
        result: Result<PathSwitchAck, CallFailure>,
        out: &mut Vec<Action>,
    ) {
        let Some(ctx) = self.contexts.get_mut(supi) else {
            return;
        };
        if ctx.epoch != epoch || ctx.phase != Phase::PathSwitching {
            return;
        }
        let Some(a) = ctx.arrival.as_mut() else {
            return;
        };
        let sent = a.path_switch_sent.unwrap_or(now);
        match result {
            Err(CallFailure {
                detail,
                retry: true,
            }) if now - sent + Self::path_switch_backoff(a.path_switch_tries)
                < PATH_SWITCH_GUARD =>
            {
                // The SMF did not answer (it may be restarting): the same request again later;
                // it answers a repeated path switch with the same result.
                let wait = Self::path_switch_backoff(a.path_switch_tries);
                tracing::warn!(
                    supi,
                    detail,
                    tries = a.path_switch_tries,
                    retry_in_ms = wait.as_millis() as u64,
                    "path switch not answered; trying again"
                );
                a.timeline.push(step(
                    format!(
                        "path switch request to smf failed (try {}): {detail}; again in {} ms",
                        a.path_switch_tries,
                        wait.as_millis()
                    ),
                    now - a.started,
                    Duration::ZERO,
                ));
                out.push(Action::StartTimer {
                    supi: supi.to_owned(),
                    epoch,
                    timer: Timer::PathSwitchRetry,
                    at: now + wait,
                });
            }
            Err(CallFailure { detail, .. }) => {
                // The UE stays here on the old UPF's uplink tunnel; no release is sent, so the
                // source's trigger fails on its guard timer.
                tracing::error!(
                    supi,
                    detail,
                    "path switch failed; uplink stays on the old upf"
                );
                a.timeline.push(step(
                    format!("path switch request to smf failed: {detail}"),
                    sent - a.started,
                    now - sent,
                ));
                ctx.phase = Phase::Connected;
            }
            Ok(ack) => {
                a.timeline.push(step(
                    format!("path switch request to smf (acknowledged, {})", ack.upf),
                    sent - a.started,
                    now - sent,
                ));
                let shift = us(sent - a.started);
                let origin = unix_at(self.wall_anchor, a.started);
                a.timeline.extend(ack.timeline.iter().map(|s| TimelineStep {
                    step: format!("smf: {}", s.step),
                    at_us: match (s.at_unix_us, origin) {
                        (Some(u), Some(o)) => u.saturating_sub(o),
                        _ => s.at_us.saturating_add(shift),
                    },
                    took_us: s.took_us,
                    at_unix_us: s.at_unix_us,
                }));
                a.timeline.push(step(
                    format!("ue context release to {}", a.source_gnb),
                    now - a.started,
                    Duration::ZERO,
                ));
                a.timeline.sort_by_key(|s| s.at_us);
                ctx.upf_tunnel = Some(ack.upf_tunnel);
                ctx.phase = Phase::Connected;
                self.counters.handovers_in += 1;
                tracing::info!(supi, upf = ack.upf, tunnel = ?ack.upf_tunnel, "path switched");
                let mut timeline = a.timeline.clone();
                stamp(self.wall_anchor, a.started, &mut timeline);
                let release = UeContextRelease {
                    target_gnb: self.config.name.clone(),
                    supi: supi.to_owned(),
                    timeline,
                };
                match self.config.peers.get(&a.source_gnb) {
                    Some(url) => out.push(Action::ReleaseUeContext {
                        xn_url: url.clone(),
                        release,
                    }),
                    None => tracing::error!(
                        source = a.source_gnb,
                        "cannot release: source is not a peer"
                    ),
                }
                if a.end_marker {
                    let fwd = a.fwd_teid;
                    ctx.arrival = None;
                    self.by_teid.remove(&fwd);
                } else {
                    out.push(Action::StartTimer {
                        supi: supi.to_owned(),
                        epoch,
                        timer: Timer::ForwardingDone,
                        at: now + FORWARDING_TUNNEL_LIFETIME,
                    });
                }
            }
        }
    }

    /// Target: [`NEW_PATH_HOLD`] after the new path's first packet, deliver it even without the
    /// End Marker.
    pub(super) fn on_new_path_hold(&mut self, supi: &str, out: &mut Vec<Action>) {
        let Some(a) = self.contexts.get_mut(supi).and_then(|c| c.arrival.as_mut()) else {
            return;
        };
        if !a.end_marker {
            tracing::info!(
                supi,
                held = a.new_pending.len(),
                "no end marker within 200 ms; new path released"
            );
        }
        a.hold_expired = true;
        self.flush(supi, out);
    }

    /// Target: [`FORWARDING_TUNNEL_LIFETIME`] after the path switch, the forwarding tunnel goes.
    pub(super) fn on_forwarding_done(&mut self, supi: &str, out: &mut Vec<Action>) {
        let Some(ctx) = self.contexts.get_mut(supi) else {
            return;
        };
        if ctx.phase != Phase::Connected {
            return;
        }
        if let Some(a) = ctx.arrival.take() {
            self.by_teid.remove(&a.fwd_teid);
            // Whatever still waits goes out now, in arrival order per path.
            let mut a = a;
            let pending: Vec<Vec<u8>> = a
                .fwd_pending
                .drain(..)
                .chain(a.new_pending.drain(..))
                .collect();
            for p in pending {
                Self::deliver(&mut self.counters, ctx, &p, out);
            }
        }
    }

    /// Target: the UE did not arrive within [`AWAITING_UE_GUARD`].
    pub(super) fn on_awaiting_ue(&mut self, supi: &str) {
        if self
            .contexts
            .get(supi)
            .is_some_and(|c| c.phase == Phase::AwaitingUe)
        {
            tracing::warn!(supi, "ue never arrived; prepared context dropped");
            self.remove_context(supi);
        }
    }
}

#[cfg(test)]
#[path = "target_tests.rs"]
mod tests;
