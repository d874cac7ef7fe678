//! Media path: this module owns everything that touches the video bytes themselves —
//! MPEG-TS chunking and parsing ([`ts`]), real-time pacing of `.ts` files ([`pacer`]), live
//! sources that turn a video file into a stream of chunks ([`source`]) and relays that deliver
//! chunks to a client as MPEG-TS over UDP ([`relay`]). `ts` and `pacer` are sans-IO; `source`
//! and `relay` are tokio drivers around them and around ffmpeg child processes ([`child`]).

pub mod child;
pub mod pacer;
pub mod relay;
pub mod source;
pub mod ts;

pub use child::ffmpeg_available;
pub use pacer::{Pacer, PacerConfig};
pub use relay::{Relay, RelayConfig, RelayKind};
pub use source::{Source, SourceHandle, SourceMode, VideoLibrary};
pub use ts::{Chunk, Chunker};
