#![no_std]
#![no_main]
use edgelora_firmware as _;
#[cortex_m_rt::entry]
fn main() -> ! {
    edgelora_firmware::exit(true)
}
