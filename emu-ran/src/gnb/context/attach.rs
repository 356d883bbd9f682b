//! Attach: an AttachRequest makes a context and asks the SMF for a PDU session; its answer
//! accepts (or rejects) the UE. Repeated requests get the same answer.

use std::net::SocketAddr;

use model::ran::n2::{PduSessionSetupRequest, PduSessionSetupResponse};
use model::ran::radio::Rrc;
use model::ran::TunnelEndpoint;

use super::{qfi_of, Action, GnbCore, Phase};
use crate::radio;

impl GnbCore {
    pub(super) fn on_attach(
        &mut self,
        from: SocketAddr,
        supi: String,
        ue_name: String,
        out: &mut Vec<Action>,
    ) {
        if let Some(ctx) = self.contexts.get_mut(&supi) {
            match ctx.phase {
                Phase::Attaching => {
                    // The SMF has not answered yet; the accept goes to the newest address.
                    ctx.ue_radio = Some(from);
                    return;
                }
                Phase::Connected => {
                    // A repeated request (the accept was lost): the same answer.
                    ctx.ue_radio = Some(from);
                    ctx.ue_name = Some(ue_name);
                    if let Some(ip) = ctx.ue_ipv4 {
                        out.push(Action::SendRadio {
                            to: from,
                            frame: radio::control_frame(&Rrc::AttachAccept {
                                radio_id: ctx.radio_id,
                                ue_ipv4: ip,
                                qfi: ctx.qfi,
                            }),
                        });
                    }
                    return;
                }
                _ => {
                    // In a handover: a fresh attach wins (the UE lost the old context).
                    tracing::warn!(
                        supi,
                        phase = ctx.phase.name(),
                        "attach during a handover: starting afresh"
                    );
                }
            }
        }
        let n3 = self.config.n3_addr;
        let gnb = self.config.name.clone();
        let ctx = self.new_context(&supi, Some(ue_name), Phase::Attaching);
        ctx.ue_radio = Some(from);
        tracing::info!(
            supi,
            radio_id = ctx.radio_id,
            dl_teid = ctx.dl_teid,
            "attach request"
        );
        out.push(Action::SetupPduSession {
            supi: supi.clone(),
            epoch: ctx.epoch,
            request: PduSessionSetupRequest {
                supi,
                gnb,
                gnb_tunnel: TunnelEndpoint {
                    ipv4: n3,
                    teid: ctx.dl_teid,
                },
            },
        });
    }

    pub(super) fn on_session_setup(
        &mut self,
        supi: &str,
        epoch: u64,
        result: Result<PduSessionSetupResponse, String>,
        out: &mut Vec<Action>,
    ) {
        let default_qfi = self.config.qfi;
        let Some(ctx) = self.contexts.get_mut(supi) else {
            return;
        };
        if ctx.epoch != epoch || ctx.phase != Phase::Attaching {
            tracing::debug!(supi, "late pdu session answer ignored");
            return;
        }
        let Some(to) = ctx.ue_radio else { return };
        match result {
            Ok(resp) => {
                ctx.ue_ipv4 = Some(resp.ue_ipv4);
                ctx.qfi = if qfi_of(resp.qfi).is_some() {
                    resp.qfi
                } else {
                    default_qfi
                };
                ctx.upf_tunnel = Some(resp.upf_tunnel);
                ctx.phase = Phase::Connected;
                tracing::info!(supi, ue = %resp.ue_ipv4, upf = ?resp.upf_tunnel, "attached");
                out.push(Action::SendRadio {
                    to,
                    frame: radio::control_frame(&Rrc::AttachAccept {
                        radio_id: ctx.radio_id,
                        ue_ipv4: resp.ue_ipv4,
                        qfi: ctx.qfi,
                    }),
                });
            }
            Err(cause) => {
                tracing::warn!(supi, cause, "attach rejected");
                out.push(Action::SendRadio {
                    to,
                    frame: radio::control_frame(&Rrc::AttachReject { cause }),
                });
                self.remove_context(supi);
            }
        }
    }
}

#[cfg(test)]
#[path = "attach_tests.rs"]
mod tests;
