//! The Location Registry process: `lr --config lr.json [--ready-file PATH]` (see
//! `emu_5gc::lr::LrConfig`).

use emu_5gc::lr::LrConfig;
use std::process::ExitCode;

fn main() -> ExitCode {
    sbi::nf::main("lr", |c: LrConfig, ready, shutdown| async move {
        emu_5gc::lr::run(c, ready, shutdown)
            .await
            .map_err(Into::into)
    })
}
