//! The NEF process: `nef --config nef.json [--ready-file PATH]` (see `emu_5gc::nef::NefConfig`).

use emu_5gc::nef::NefConfig;
use std::process::ExitCode;

fn main() -> ExitCode {
    sbi::nf::main("nef", |c: NefConfig, ready, shutdown| async move {
        emu_5gc::nef::run(c, ready, shutdown)
            .await
            .map_err(Into::into)
    })
}
