//! The source side of an Xn handover: the trigger, the HandoverRequest to the target, the
//! HandoverCommand to the UE, forwarding the old path's downlink (and its End Marker) to the
//! target, and the UE Context Release that answers the trigger with the merged timeline.

use std::net::Ipv4Addr;

use model::ran::radio::Rrc;
use model::ran::xn::{
    HandoverReport, HandoverRequest, HandoverRequestAck, HandoverTrigger, UeContextRelease,
};
use model::ran::TimelineStep;
use tokio::time::{Duration, Instant};
use wire::gtpu::{self, GtpuRepr, PduSessionInfo, Teid};

use super::{
    qfi_of, step, unix_at, us, Action, Failure, GnbCore, Phase, RequestId, SourceHandover, Timer,
    HANDOVER_GUARD, RELEASE_LINGER,
};
use crate::radio;

impl GnbCore {
    pub(super) fn find_ue(&self, ue: &str) -> Option<String> {
        if self.contexts.contains_key(ue) {
            return Some(ue.to_owned());
        }
        self.contexts
            .values()
            .find(|c| c.ue_name.as_deref() == Some(ue))
            .map(|c| c.supi.clone())
    }

    pub(super) fn on_trigger(
        &mut self,
        now: Instant,
        id: RequestId,
        t: HandoverTrigger,
        out: &mut Vec<Action>,
    ) {
        let fail = |status, detail: String| Action::AnswerTrigger {
            id,
            result: Err(Failure::new(status, detail)),
        };
        let Some(supi) = self.find_ue(&t.ue) else {
            out.push(fail(
                404,
                format!("no ue `{}` at {}", t.ue, self.config.name),
            ));
            return;
        };
        if t.target_gnb == self.config.name {
            out.push(fail(
                400,
                format!("ue `{}` is already served by {}", t.ue, t.target_gnb),
            ));
            return;
        }
        let Some(xn_url) = self.config.peers.get(&t.target_gnb).cloned() else {
            out.push(fail(400, format!("unknown target gnb `{}`", t.target_gnb)));
            return;
        };
        let name = self.config.name.clone();
        let Some(ctx) = self.contexts.get_mut(&supi) else {
            return;
        };
        let (Phase::Connected, Some(ue_ipv4), Some(upf_tunnel), None) =
            (&ctx.phase, ctx.ue_ipv4, ctx.upf_tunnel, &ctx.arrival)
        else {
            out.push(fail(
                409,
                format!(
                    "ue `{}` is {} here, not ready for a handover",
                    t.ue,
                    ctx.phase.name()
                ),
            ));
            return;
        };
        tracing::info!(supi, target = t.target_gnb, "handover triggered");
        ctx.phase = Phase::Preparing(SourceHandover {
            trigger: id,
            target_gnb: t.target_gnb.clone(),
            started: now,
            request_sent: now,
            acked: None,
            timeline: Vec::new(),
            tunnel: None,
            forwarded: 0,
            end_marker_forwarded: false,
            released: false,
        });
        out.push(Action::RequestHandover {
            supi: supi.clone(),
            epoch: ctx.epoch,
            xn_url,
            request: HandoverRequest {
                source_gnb: name,
                supi: supi.clone(),
                ue_ipv4,
                qfi: ctx.qfi,
                upf_tunnel,
                ue_name: ctx.ue_name.clone(),
            },
        });
        out.push(Action::StartTimer {
            supi,
            epoch: ctx.epoch,
            timer: Timer::HandoverGuard,
            at: now + HANDOVER_GUARD,
        });
    }

    pub(super) fn on_prepared(
        &mut self,
        now: Instant,
        supi: &str,
        epoch: u64,
        result: Result<HandoverRequestAck, String>,
        out: &mut Vec<Action>,
    ) {
        let Some(ctx) = self.contexts.get_mut(supi) else {
            return;
        };
        if ctx.epoch != epoch {
            return;
        }
        let Phase::Preparing(ho) = &mut ctx.phase else {
            return;
        };
        let mut ho = ho.clone();
        match result {
            Err(detail) => {
                tracing::warn!(
                    supi,
                    target = ho.target_gnb,
                    detail,
                    "handover preparation failed"
                );
                out.push(Action::AnswerTrigger {
                    id: ho.trigger,
                    result: Err(Failure::new(
                        502,
                        format!("target {} refused the handover: {detail}", ho.target_gnb),
                    )),
                });
                ctx.phase = Phase::Connected;
            }
            Ok(ack) => {
                ho.timeline.push(step(
                    format!("handover request to {} (acknowledged)", ho.target_gnb),
                    ho.request_sent - ho.started,
                    now - ho.request_sent,
                ));
                ho.timeline.push(step(
                    "handover command to ue",
                    now - ho.started,
                    Duration::ZERO,
                ));
                ho.tunnel = Some(ack.forwarding_tunnel);
                ho.acked = Some(now);
                let Some(to) = ctx.ue_radio else { return };
                tracing::info!(
                    supi,
                    target = ho.target_gnb,
                    radio_id = ack.radio_id,
                    "handover command"
                );
                out.push(Action::SendRadio {
                    to,
                    frame: radio::control_frame(&Rrc::HandoverCommand {
                        target_gnb: ho.target_gnb.clone(),
                        target: ack.radio,
                        radio_id: ack.radio_id,
                    }),
                });
                ctx.phase = Phase::Forwarding(ho);
            }
        }
    }

    /// Source, handing out: a downlink G-PDU (or the End Marker) from the old path goes to the
    /// target's forwarding tunnel.
    pub(super) fn forward_downlink(
        &mut self,
        now: Instant,
        supi: &str,
        end_marker: bool,
        payload: Vec<u8>,
        out: &mut Vec<Action>,
    ) {
        let Some(ctx) = self.contexts.get_mut(supi) else {
            return;
        };
        let Phase::Forwarding(ho) = &mut ctx.phase else {
            return;
        };
        let Some(tunnel) = ho.tunnel else { return };
        let repr = if end_marker {
            GtpuRepr::end_marker(Teid(tunnel.teid))
        } else {
            GtpuRepr::g_pdu(
                Teid(tunnel.teid),
                qfi_of(ctx.qfi).map(PduSessionInfo::downlink),
            )
        };
        let Ok(message) = gtpu::to_vec(&repr, &payload) else {
            self.counters.downlink_dropped += 1;
            return;
        };
        out.push(Action::SendGtpu {
            to: tunnel.ipv4,
            message,
        });
        if end_marker {
            ho.end_marker_forwarded = true;
            let at = now - ho.started;
            ho.timeline.push(step(
                format!("end marker forwarded to {}", ho.target_gnb),
                at,
                Duration::ZERO,
            ));
            tracing::info!(supi, forwarded = ho.forwarded, "end marker forwarded");
            if ho.released {
                self.remove_context(supi);
            }
        } else {
            ho.forwarded += 1;
            self.counters.packets_forwarded += 1;
        }
    }

    pub(super) fn on_release(
        &mut self,
        now: Instant,
        id: RequestId,
        r: UeContextRelease,
        out: &mut Vec<Action>,
    ) {
        let name = self.config.name.clone();
        let Some(ctx) = self.contexts.get_mut(&r.supi) else {
            out.push(Action::AnswerRelease {
                id,
                result: Err(Failure::new(404, format!("no ue context for {}", r.supi))),
            });
            return;
        };
        let (ue_ipv4, epoch) = (ctx.ue_ipv4, ctx.epoch);
        let Phase::Forwarding(ho) = &mut ctx.phase else {
            out.push(Action::AnswerRelease {
                id,
                result: Err(Failure::new(
                    409,
                    format!(
                        "ue {} is {} here, not handed over",
                        r.supi,
                        ctx.phase.name()
                    ),
                )),
            });
            return;
        };
        out.push(Action::AnswerRelease { id, result: Ok(()) });
        if ho.released {
            return;
        }
        if ho.target_gnb != r.target_gnb {
            tracing::warn!(
                supi = r.supi,
                expected = ho.target_gnb,
                got = r.target_gnb,
                "release from another gnb"
            );
        }
        ho.released = true;
        // The target's steps are relative to the HandoverRequest's arrival there, which has no
        // common clock with ours. We place that instant at the arrival of its acknowledgement
        // here: the target acknowledges at once, so this errs late by the answer's one-way delay
        // and keeps cause before effect (the UE's arrival at the target after our
        // HandoverCommand). The sending time would err early by the request's delay, which
        // includes the h2c connection set-up on a first handover (several ms).
        // With a wall-clock anchor (the real binary) the target's and the SMF's steps carry the
        // host's wall-clock time, shared by all processes, and line up exactly.
        let shift = ho.acked.unwrap_or(ho.request_sent) - ho.started;
        let origin = unix_at(self.wall_anchor, ho.started);
        let mut timeline = ho.timeline.clone();
        timeline.extend(r.timeline.iter().map(|s| TimelineStep {
            step: s.step.clone(),
            at_us: match (s.at_unix_us, origin) {
                (Some(u), Some(o)) => u.saturating_sub(o),
                _ => s.at_us.saturating_add(us(shift)),
            },
            took_us: s.took_us,
            at_unix_us: s.at_unix_us,
        }));
        timeline.push(step(
            format!("ue context release from {}", r.target_gnb),
            now - ho.started,
            Duration::ZERO,
        ));
        timeline.sort_by_key(|s| s.at_us);
        let report = HandoverReport {
            supi: r.supi.clone(),
            ue_ipv4: ue_ipv4.unwrap_or(Ipv4Addr::UNSPECIFIED),
            source_gnb: name,
            target_gnb: ho.target_gnb.clone(),
            timeline,
            forwarded_packets: ho.forwarded,
        };
        tracing::info!(supi = r.supi, forwarded = ho.forwarded, "handover complete");
        self.counters.handovers_out += 1;
        out.push(Action::AnswerTrigger {
            id: ho.trigger,
            result: Ok(report),
        });
        if ho.end_marker_forwarded {
            self.remove_context(&r.supi);
        } else {
            out.push(Action::StartTimer {
                supi: r.supi,
                epoch,
                timer: Timer::ReleaseLinger,
                at: now + RELEASE_LINGER,
            });
        }
    }

    /// Source: [`RELEASE_LINGER`] after the release no End Marker came; stop forwarding.
    pub(super) fn on_release_linger(&mut self, supi: &str) {
        if self
            .contexts
            .get(supi)
            .is_some_and(|c| matches!(&c.phase, Phase::Forwarding(ho) if ho.released))
        {
            tracing::info!(
                supi,
                "no end marker within 1 s of the release; context dropped"
            );
            self.remove_context(supi);
        }
    }

    /// Source: the trigger waited [`HANDOVER_GUARD`] for the whole handover.
    pub(super) fn on_handover_guard(&mut self, supi: &str, out: &mut Vec<Action>) {
        let Some(ctx) = self.contexts.get_mut(supi) else {
            return;
        };
        match &ctx.phase {
            Phase::Preparing(ho) => {
                out.push(Action::AnswerTrigger {
                    id: ho.trigger,
                    result: Err(Failure::new(
                        504,
                        format!("no answer from {}", ho.target_gnb),
                    )),
                });
                ctx.phase = Phase::Connected;
            }
            Phase::Forwarding(ho) if !ho.released => {
                out.push(Action::AnswerTrigger {
                    id: ho.trigger,
                    result: Err(Failure::new(
                        504,
                        format!(
                            "ue left for {} but no ue context release came within {} s (ue arrival or path switch failed there)",
                            ho.target_gnb,
                            HANDOVER_GUARD.as_secs()
                        ),
                    )),
                });
                self.remove_context(supi);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
#[path = "source_tests.rs"]
mod tests;
