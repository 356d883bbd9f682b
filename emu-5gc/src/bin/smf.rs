//! The SMF process: `smf --config smf.json [--ready-file PATH]` (see `emu_5gc::smf::SmfConfig`).

use emu_5gc::smf::SmfConfig;
use std::process::ExitCode;

fn main() -> ExitCode {
    sbi::nf::main("smf", |c: SmfConfig, ready, shutdown| async move {
        emu_5gc::smf::run(c, ready, shutdown)
            .await
            .map_err(Into::into)
    })
}
