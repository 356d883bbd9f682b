//! The user plane of a served UE: uplink frames become G-PDUs to the UPF, GTP-U from the UPFs
//! and peers is sorted by the TEID's role, downlink reaches the UE over the radio. What a
//! handover adds (forwarding out, holding back in) is in [`super::source`] and [`super::target`].

use std::net::SocketAddr;

use tokio::time::Instant;
use wire::gtpu::{self, GtpuRepr, MessageType, PduSessionInfo, Teid};

use super::{qfi_of, Action, Counters, GnbCore, Phase, TeidRole, UeContext};
use crate::radio;

impl GnbCore {
    pub(super) fn on_uplink(&mut self, radio_id: u16, packet: &[u8], out: &mut Vec<Action>) {
        let ctx = self
            .by_radio_id
            .get(&radio_id)
            .and_then(|s| self.contexts.get_mut(s));
        let Some(ctx) = ctx else {
            self.counters.uplink_dropped += 1;
            return;
        };
        let Some(tunnel) = ctx.upf_tunnel else {
            self.counters.uplink_dropped += 1;
            return;
        };
        let repr = GtpuRepr::g_pdu(
            Teid(tunnel.teid),
            qfi_of(ctx.qfi).map(PduSessionInfo::uplink),
        );
        match gtpu::to_vec(&repr, packet) {
            Ok(message) => {
                ctx.packets_up += 1;
                self.counters.packets_up += 1;
                out.push(Action::SendGtpu {
                    to: tunnel.ipv4,
                    message,
                });
            }
            Err(e) => {
                self.counters.uplink_dropped += 1;
                tracing::warn!(error = %e, "uplink packet does not fit a g-pdu");
            }
        }
    }

    pub(super) fn deliver(
        counters: &mut Counters,
        ctx: &mut UeContext,
        packet: &[u8],
        out: &mut Vec<Action>,
    ) {
        match ctx.ue_radio {
            Some(to) => {
                ctx.packets_down += 1;
                counters.packets_down += 1;
                out.push(Action::SendRadio {
                    to,
                    frame: radio::data_frame(ctx.radio_id, packet),
                });
            }
            None => counters.downlink_dropped += 1,
        }
    }

    pub(super) fn on_gtpu(
        &mut self,
        now: Instant,
        from: SocketAddr,
        repr: GtpuRepr,
        payload: Vec<u8>,
        out: &mut Vec<Action>,
    ) {
        match repr.msg_type {
            MessageType::EchoRequest => {
                let seq = repr.seq.unwrap_or(0);
                if let Ok(message) = gtpu::to_vec(&GtpuRepr::echo_response(seq), &gtpu::RECOVERY_IE)
                {
                    out.push(Action::ReplyGtpu { to: from, message });
                }
                return;
            }
            MessageType::GPdu | MessageType::EndMarker => {}
            other => {
                tracing::debug!(%from, kind = ?other, "gtp-u message ignored");
                return;
            }
        }
        let Some((supi, role)) = self.by_teid.get(&repr.teid.0).cloned() else {
            self.counters.unknown_teid += 1;
            tracing::debug!(%from, teid = %repr.teid, "gtp-u for an unknown teid");
            return;
        };
        let end_marker = repr.msg_type == MessageType::EndMarker;
        match role {
            TeidRole::Downlink => self.on_downlink(now, &supi, end_marker, payload, out),
            TeidRole::Forwarding => self.on_forwarded(&supi, end_marker, payload, out),
        }
    }

    /// Downlink on this gNB's N3 tunnel of `supi`: forwarded to the target while handing out,
    /// held back while a handover in is waiting for the old path to end, else delivered.
    fn on_downlink(
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
        if matches!(ctx.phase, Phase::Forwarding(_)) {
            self.forward_downlink(now, supi, end_marker, payload, out);
            return;
        }
        if end_marker {
            // An End Marker on our own downlink tunnel without a handover out: nothing to do.
            tracing::debug!(supi, "end marker on a tunnel that is not being forwarded");
            return;
        }
        if ctx
            .arrival
            .as_ref()
            .is_some_and(|a| !(a.end_marker || a.hold_expired) || ctx.ue_radio.is_none())
        {
            self.hold_new_path(now, supi, payload, out);
            return;
        }
        if ctx.phase == Phase::Attaching || ctx.phase == Phase::AwaitingUe {
            self.counters.downlink_dropped += 1;
            return;
        }
        Self::deliver(&mut self.counters, ctx, &payload, out);
    }
}

#[cfg(test)]
#[path = "user_plane_tests.rs"]
mod tests;
