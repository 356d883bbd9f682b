//! `ue --config ue1.json [--ready-file PATH]`: the UE stand-in (see `emu_ran::ue`).

use emu_ran::ue::UeConfig;

fn main() -> std::process::ExitCode {
    sbi::nf::main("ue", |c: UeConfig, ready, shutdown| async move {
        emu_ran::ue::run(c, ready, shutdown)
            .await
            .map_err(Into::into)
    })
}
