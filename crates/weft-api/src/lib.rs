//! The gRPC contract between weft proxies and the control plane (DESIGN.md §3: the only
//! crate, with `weft-model`, that both sides share).
//!
//! `proto/weft/discovery/v1/discovery.proto` is the source of truth; `build.rs` compiles
//! it with protox, so no system `protoc` is needed.

/// `weft.discovery.v1`: the discovery stream (see the `.proto` for its rules).
#[allow(missing_docs, clippy::all)]
pub mod discovery {
    tonic::include_proto!("weft.discovery.v1");
}

pub mod sketch;

/// `grpc.health.v1`: the standard gRPC health protocol (the sidecar checks gRPC apps with it).
#[allow(missing_docs, clippy::all)]
pub mod health {
    tonic::include_proto!("grpc.health.v1");
}

/// The protobuf codec of weft's gRPC code: tonic's prost codec with 1 KiB starting buffers
/// instead of 8 KiB. Buffers grow for large messages; a server holding tens of thousands of
/// mostly idle discovery streams saves ~14 KiB per stream (one encode and one decode
/// buffer each).
pub mod codec {
    use std::marker::PhantomData;

    use tonic::codec::{BufferSettings, Codec};
    use tonic_prost::{ProstDecoder, ProstEncoder};

    /// Starting size of a stream's encode and decode buffers.
    pub const BUFFER_BYTES: usize = 1024;
    /// tonic's default: how much a stream encodes before yielding.
    const YIELD_THRESHOLD: usize = 32 * 1024;

    /// See the module docs.
    #[derive(Debug, Clone, Copy)]
    pub struct SmallBufferCodec<T, U>(PhantomData<(T, U)>);

    impl<T, U> Default for SmallBufferCodec<T, U> {
        fn default() -> Self {
            SmallBufferCodec(PhantomData)
        }
    }

    fn settings() -> BufferSettings {
        BufferSettings::new(BUFFER_BYTES, YIELD_THRESHOLD)
    }

    impl<T, U> Codec for SmallBufferCodec<T, U>
    where
        T: prost::Message + Send + 'static,
        U: prost::Message + Default + Send + 'static,
    {
        type Encode = T;
        type Decode = U;
        type Encoder = ProstEncoder<T>;
        type Decoder = ProstDecoder<U>;

        fn encoder(&mut self) -> Self::Encoder {
            ProstEncoder::new(settings())
        }

        fn decoder(&mut self) -> Self::Decoder {
            ProstDecoder::new(settings())
        }
    }
}
