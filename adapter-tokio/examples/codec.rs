//! A custom codec: plug any serializer in place of postcard.
//!
//! `cargo run -p parallel-tokio --example codec`

use parallel_tokio::{Codec, CodecError};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// Postcard with a length-and-checksum trailer: a stand-in for any format
/// (JSON, bincode, MessagePack...). Both sides use it: it is part of the type.
struct Checked;

impl Codec for Checked {
    fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
        let mut bytes = postcard::to_stdvec(value)?;
        let sum = bytes.iter().fold(0u8, |acc, b| acc.wrapping_add(*b));
        bytes.push(sum);
        Ok(bytes)
    }

    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
        let (sum, body) = bytes.split_last().ok_or("empty message")?;
        if body.iter().fold(0u8, |acc, b| acc.wrapping_add(*b)) != *sum {
            return Err("checksum mismatch".into());
        }
        Ok(postcard::from_bytes(body)?)
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Order {
    item: String,
    quantity: u32,
}

fn main() -> Result<(), parallel_tokio::Error> {
    let parallel = parallel_tokio::init()?.with_codec::<Checked>();
    tokio::runtime::Runtime::new()?.block_on(async move {
        let total = parallel
            .spawn(
                |orders: Vec<Order>| async move { orders.iter().map(|o| o.quantity).sum::<u32>() },
                vec![
                    Order {
                        item: "apples".into(),
                        quantity: 3,
                    },
                    Order {
                        item: "pears".into(),
                        quantity: 4,
                    },
                ],
            )
            .await?;
        println!("total quantity, computed in a worker: {total}");
        Ok(())
    })
}
