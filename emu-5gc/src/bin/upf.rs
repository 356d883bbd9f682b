//! The UPF binary: `upf --config upf-a.json [--ready-file PATH]`.

use emu_5gc::upf::UpfConfig;
use std::process::ExitCode;

fn main() -> ExitCode {
    sbi::nf::main("upf", |c: UpfConfig, ready, shutdown| async move {
        emu_5gc::upf::run(c, ready, shutdown)
            .await
            .map_err(Into::into)
    })
}
