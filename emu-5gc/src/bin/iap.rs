//! The IAP binary: `iap --config iap-a.json [--ready-file PATH]`.

use emu_5gc::iap::IapConfig;
use std::process::ExitCode;

fn main() -> ExitCode {
    sbi::nf::main("iap", |c: IapConfig, ready, shutdown| async move {
        emu_5gc::iap::run(c, ready, shutdown)
            .await
            .map_err(Into::into)
    })
}
