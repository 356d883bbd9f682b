//! `gnb --config gnb-a.json [--ready-file PATH]`: the gNB stand-in (see `emu_ran::gnb`).

use emu_ran::gnb::GnbConfig;

fn main() -> std::process::ExitCode {
    sbi::nf::main("gnb", |c: GnbConfig, ready, shutdown| async move {
        emu_ran::gnb::run(c, ready, shutdown)
            .await
            .map_err(Into::into)
    })
}
