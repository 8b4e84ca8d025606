//! Recovers what postcard forgets: the message of a custom serde error (a
//! `Serialize` or `Deserialize` impl's own `Error::custom("...")`) and the
//! path of the field that raised it.
//!
//! postcard keeps no message for custom errors (its `SerdeSerCustom` and
//! `SerdeDeCustom` carry none). When an encode or decode fails that way,
//! the codec runs it once more through the wrappers here, whose error type
//! records the first custom message and the fields it crossed on its way
//! out. Only failures pay for this: the fast path never sees a wrapper.
//!
//! * Encoding again needs no output, so it serializes into [`NullSer`],
//!   which writes nothing.
//! * Decoding again must read postcard's bytes, so [`TapDe`] wraps
//!   postcard's deserializer, and every visitor, sequence, map and enum
//!   access handed to the user's impls, so that they see an error type of
//!   ours.

use std::cell::RefCell;
use std::fmt::{self, Display};

use serde::de::{self, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, Visitor};
use serde::ser::{self, Serialize, Serializer};

thread_local! {
    /// The first custom error raised during a re-run, and the path it took
    /// out (innermost first).
    static CAUGHT: RefCell<Option<(String, Vec<String>)>> = const { RefCell::new(None) };
}

/// The error of the wrappers: a custom message (also recorded in
/// [`CAUGHT`]) or the inner format's own error.
#[derive(Debug)]
pub(crate) struct TapError(String);

impl Display for TapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TapError {}

impl TapError {
    fn caught(msg: impl Display) -> TapError {
        let message = msg.to_string();
        CAUGHT.with(|c| {
            let mut c = c.borrow_mut();
            if c.is_none() {
                *c = Some((message.clone(), Vec::new()));
            }
        });
        TapError(message)
    }

    fn inner(e: impl Display) -> TapError {
        TapError(e.to_string())
    }
}

impl ser::Error for TapError {
    fn custom<T: Display>(msg: T) -> TapError {
        TapError::caught(msg)
    }
}

impl de::Error for TapError {
    fn custom<T: Display>(msg: T) -> TapError {
        TapError::caught(msg)
    }
}

/// Hands a wrapper's error to an outer format's error type.
fn out<E: de::Error>(e: TapError) -> E {
    E::custom(e)
}

/// Notes that the error on its way out crossed `segment`.
fn crossed(segment: impl FnOnce() -> String) {
    CAUGHT.with(|c| {
        if let Some((_, path)) = c.borrow_mut().as_mut() {
            path.push(segment());
        }
    });
}

/// Runs `f` with a clean record; returns the message and path caught.
fn catching(f: impl FnOnce()) -> Option<String> {
    CAUGHT.with(|c| c.borrow_mut().take());
    f();
    let (message, mut path) = CAUGHT.with(|c| c.borrow_mut().take())?;
    if path.is_empty() {
        return Some(message);
    }
    path.reverse();
    Some(format!("{message} (at {})", path.concat()))
}

/// The custom message (and field path) that makes `value` fail to
/// serialize, if a custom error is what fails it.
pub(crate) fn explain_ser<T: Serialize + ?Sized>(value: &T) -> Option<String> {
    catching(|| {
        let _ = value.serialize(NullSer);
    })
}

/// The custom message (and field path) that makes `bytes` fail to decode as
/// a `T`, if a custom error is what fails it.
pub(crate) fn explain_de<'de, T: de::Deserialize<'de>>(bytes: &'de [u8]) -> Option<String> {
    catching(|| {
        let mut inner = postcard::Deserializer::from_bytes(bytes);
        let _ = T::deserialize(TapDe(&mut inner));
    })
}

fn field(name: &str) -> String {
    format!(".{name}")
}

fn index(i: usize) -> String {
    format!("[{i}]")
}

// ------------------------------------------------------------- encoding

/// A serializer that writes nothing and keeps custom messages.
struct NullSer;

/// Its compound serializers; `fields` names struct fields for the path.
struct NullCompound {
    next: usize,
}

macro_rules! null_scalars {
    ($($method:ident($ty:ty)),* $(,)?) => {
        $(fn $method(self, _: $ty) -> Result<(), TapError> { Ok(()) })*
    };
}

macro_rules! null_compounds {
    ($($method:ident($($arg:ty),*)),* $(,)?) => {
        $(fn $method(self, $(_: $arg),*) -> Result<NullCompound, TapError> {
            Ok(NullCompound { next: 0 })
        })*
    };
}

impl Serializer for NullSer {
    type Ok = ();
    type Error = TapError;
    type SerializeSeq = NullCompound;
    type SerializeTuple = NullCompound;
    type SerializeTupleStruct = NullCompound;
    type SerializeTupleVariant = NullCompound;
    type SerializeMap = NullCompound;
    type SerializeStruct = NullCompound;
    type SerializeStructVariant = NullCompound;

    null_scalars!(
        serialize_bool(bool),
        serialize_i8(i8),
        serialize_i16(i16),
        serialize_i32(i32),
        serialize_i64(i64),
        serialize_i128(i128),
        serialize_u8(u8),
        serialize_u16(u16),
        serialize_u32(u32),
        serialize_u64(u64),
        serialize_u128(u128),
        serialize_f32(f32),
        serialize_f64(f64),
        serialize_char(char),
        serialize_str(&str),
        serialize_bytes(&[u8]),
        serialize_unit_struct(&'static str),
    );

    fn serialize_none(self) -> Result<(), TapError> {
        Ok(())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, v: &T) -> Result<(), TapError> {
        v.serialize(NullSer)
    }
    fn serialize_unit(self) -> Result<(), TapError> {
        Ok(())
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
    ) -> Result<(), TapError> {
        Ok(())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        v: &T,
    ) -> Result<(), TapError> {
        v.serialize(NullSer)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        v: &T,
    ) -> Result<(), TapError> {
        v.serialize(NullSer)
            .inspect_err(|_| crossed(|| field(variant)))
    }
    null_compounds!(
        serialize_seq(Option<usize>),
        serialize_tuple(usize),
        serialize_tuple_struct(&'static str, usize),
        serialize_tuple_variant(&'static str, u32, &'static str, usize),
        serialize_map(Option<usize>),
        serialize_struct(&'static str, usize),
        serialize_struct_variant(&'static str, u32, &'static str, usize),
    );
}

impl NullCompound {
    fn element<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), TapError> {
        let i = self.next;
        self.next += 1;
        v.serialize(NullSer).inspect_err(|_| crossed(|| index(i)))
    }
}

macro_rules! null_compound {
    ($($trait:ident :: $method:ident),* $(,)?) => {$(
        impl ser::$trait for NullCompound {
            type Ok = ();
            type Error = TapError;
            fn $method<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), TapError> {
                self.element(v)
            }
            fn end(self) -> Result<(), TapError> {
                Ok(())
            }
        }
    )*};
}

null_compound!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field,
);

impl ser::SerializeMap for NullCompound {
    type Ok = ();
    type Error = TapError;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, k: &T) -> Result<(), TapError> {
        k.serialize(NullSer)
            .inspect_err(|_| crossed(|| "{key}".to_owned()))
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), TapError> {
        self.element(v)
    }
    fn end(self) -> Result<(), TapError> {
        Ok(())
    }
}

macro_rules! null_struct {
    ($($trait:ident),*) => {$(
        impl ser::$trait for NullCompound {
            type Ok = ();
            type Error = TapError;
            fn serialize_field<T: Serialize + ?Sized>(
                &mut self,
                key: &'static str,
                v: &T,
            ) -> Result<(), TapError> {
                v.serialize(NullSer).inspect_err(|_| crossed(|| field(key)))
            }
            fn end(self) -> Result<(), TapError> {
                Ok(())
            }
        }
    )*};
}

null_struct!(SerializeStruct, SerializeStructVariant);

// ------------------------------------------------------------- decoding

/// A deserializer whose user-facing error type is ours.
struct TapDe<D>(D);

/// A visitor handed to the inner deserializer: it gives the user's visitor
/// wrapped accessors. `fields` names a struct's fields for the path.
struct TapVisitor<V> {
    inner: V,
    fields: Option<&'static [&'static str]>,
}

impl<V> TapVisitor<V> {
    fn new(inner: V) -> TapVisitor<V> {
        TapVisitor {
            inner,
            fields: None,
        }
    }

    /// A visitor of a struct whose fields name the path.
    fn of_struct(inner: V, fields: &'static [&'static str]) -> TapVisitor<V> {
        TapVisitor {
            inner,
            fields: Some(fields),
        }
    }
}

macro_rules! tap_forward {
    ($($method:ident($($arg:ident: $ty:ty),*)),* $(,)?) => {$(
        fn $method<V: Visitor<'de>>(
            self,
            $($arg: $ty,)*
            visitor: V,
        ) -> Result<V::Value, TapError> {
            self.0
                .$method($($arg,)* TapVisitor::new(visitor))
                .map_err(TapError::inner)
        }
    )*};
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for TapDe<D> {
    type Error = TapError;

    tap_forward!(
        deserialize_any(),
        deserialize_bool(),
        deserialize_i8(),
        deserialize_i16(),
        deserialize_i32(),
        deserialize_i64(),
        deserialize_i128(),
        deserialize_u8(),
        deserialize_u16(),
        deserialize_u32(),
        deserialize_u64(),
        deserialize_u128(),
        deserialize_f32(),
        deserialize_f64(),
        deserialize_char(),
        deserialize_str(),
        deserialize_string(),
        deserialize_bytes(),
        deserialize_byte_buf(),
        deserialize_option(),
        deserialize_unit(),
        deserialize_seq(),
        deserialize_map(),
        deserialize_identifier(),
        deserialize_ignored_any(),
        deserialize_unit_struct(name: &'static str),
        deserialize_newtype_struct(name: &'static str),
        deserialize_tuple(len: usize),
        deserialize_tuple_struct(name: &'static str, len: usize),
        deserialize_enum(name: &'static str, variants: &'static [&'static str]),
    );

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, TapError> {
        self.0
            .deserialize_struct(name, fields, TapVisitor::of_struct(visitor, fields))
            .map_err(TapError::inner)
    }
    fn is_human_readable(&self) -> bool {
        self.0.is_human_readable()
    }
}

macro_rules! visit_forward {
    ($($method:ident($ty:ty)),* $(,)?) => {$(
        fn $method<E: de::Error>(self, v: $ty) -> Result<V::Value, E> {
            self.inner.$method::<TapError>(v).map_err(out)
        }
    )*};
}

impl<'de, V: Visitor<'de>> Visitor<'de> for TapVisitor<V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.expecting(f)
    }

    visit_forward!(
        visit_bool(bool),
        visit_i8(i8),
        visit_i16(i16),
        visit_i32(i32),
        visit_i64(i64),
        visit_i128(i128),
        visit_u8(u8),
        visit_u16(u16),
        visit_u32(u32),
        visit_u64(u64),
        visit_u128(u128),
        visit_f32(f32),
        visit_f64(f64),
        visit_char(char),
        visit_str(&str),
        visit_borrowed_str(&'de str),
        visit_string(String),
        visit_bytes(&[u8]),
        visit_borrowed_bytes(&'de [u8]),
        visit_byte_buf(Vec<u8>),
    );

    fn visit_none<E: de::Error>(self) -> Result<V::Value, E> {
        self.inner.visit_none::<TapError>().map_err(out)
    }
    fn visit_unit<E: de::Error>(self) -> Result<V::Value, E> {
        self.inner.visit_unit::<TapError>().map_err(out)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<V::Value, D::Error> {
        self.inner.visit_some(TapDe(d)).map_err(out)
    }
    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<V::Value, D::Error> {
        self.inner.visit_newtype_struct(TapDe(d)).map_err(out)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<V::Value, A::Error> {
        let seq = TapSeq {
            inner: seq,
            next: 0,
            fields: self.fields,
        };
        self.inner.visit_seq(seq).map_err(out)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        self.inner.visit_map(TapMap(map)).map_err(out)
    }
    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<V::Value, A::Error> {
        self.inner.visit_enum(TapEnum(data)).map_err(out)
    }
}

/// A seed whose deserializer is wrapped.
struct TapSeed<S>(S);

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for TapSeed<S> {
    type Value = S::Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<S::Value, D::Error> {
        self.0.deserialize(TapDe(d)).map_err(out)
    }
}

struct TapSeq<A> {
    inner: A,
    next: usize,
    fields: Option<&'static [&'static str]>,
}

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for TapSeq<A> {
    type Error = TapError;
    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, TapError> {
        let i = self.next;
        self.next += 1;
        let fields = self.fields;
        self.inner.next_element_seed(TapSeed(seed)).map_err(|e| {
            crossed(|| match fields.and_then(|f| f.get(i)) {
                Some(name) => field(name),
                None => index(i),
            });
            TapError::inner(e)
        })
    }
    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

struct TapMap<A>(A);

impl<'de, A: MapAccess<'de>> MapAccess<'de> for TapMap<A> {
    type Error = TapError;
    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, TapError> {
        self.0.next_key_seed(TapSeed(seed)).map_err(TapError::inner)
    }
    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, TapError> {
        self.0.next_value_seed(TapSeed(seed)).map_err(|e| {
            crossed(|| "{value}".to_owned());
            TapError::inner(e)
        })
    }
    fn size_hint(&self) -> Option<usize> {
        self.0.size_hint()
    }
}

struct TapEnum<A>(A);

impl<'de, A: EnumAccess<'de>> EnumAccess<'de> for TapEnum<A> {
    type Error = TapError;
    type Variant = TapVariant<A::Variant>;
    fn variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<(S::Value, Self::Variant), TapError> {
        self.0
            .variant_seed(TapSeed(seed))
            .map(|(v, variant)| (v, TapVariant(variant)))
            .map_err(TapError::inner)
    }
}

struct TapVariant<A>(A);

impl<'de, A: de::VariantAccess<'de>> de::VariantAccess<'de> for TapVariant<A> {
    type Error = TapError;
    fn unit_variant(self) -> Result<(), TapError> {
        self.0.unit_variant().map_err(TapError::inner)
    }
    fn newtype_variant_seed<S: DeserializeSeed<'de>>(self, seed: S) -> Result<S::Value, TapError> {
        self.0
            .newtype_variant_seed(TapSeed(seed))
            .map_err(TapError::inner)
    }
    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, TapError> {
        self.0
            .tuple_variant(len, TapVisitor::new(visitor))
            .map_err(TapError::inner)
    }
    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, TapError> {
        self.0
            .struct_variant(fields, TapVisitor::of_struct(visitor, fields))
            .map_err(TapError::inner)
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    /// Refuses to serialize, and to deserialize odd numbers.
    #[derive(Debug)]
    struct Picky(u32);

    impl Serialize for Picky {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            if self.0 == 13 {
                return Err(serde::ser::Error::custom("13 is unlucky"));
            }
            s.serialize_u32(self.0)
        }
    }

    impl<'de> Deserialize<'de> for Picky {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Picky, D::Error> {
            let n = u32::deserialize(d)?;
            if n % 2 == 1 {
                return Err(serde::de::Error::custom(format!("{n} is odd")));
            }
            Ok(Picky(n))
        }
    }

    #[derive(Debug, Serialize, Deserialize)]
    struct Outer {
        name: String,
        items: Vec<Inner>,
    }

    #[derive(Debug, Serialize, Deserialize)]
    struct Inner {
        id: u8,
        value: Option<Picky>,
    }

    fn outer(value: u32) -> Outer {
        Outer {
            name: "x".into(),
            items: vec![
                Inner {
                    id: 0,
                    value: Some(Picky(2)),
                },
                Inner {
                    id: 1,
                    value: Some(Picky(value)),
                },
            ],
        }
    }

    #[test]
    fn encode_failures_keep_their_message_and_path() {
        let why = super::explain_ser(&outer(13)).unwrap();
        assert_eq!(why, "13 is unlucky (at .items[1].value)");
        assert_eq!(super::explain_ser(&outer(4)), None);
    }

    #[test]
    fn decode_failures_keep_their_message_and_path() {
        let bytes =
            postcard::to_stdvec(&(String::from("x"), vec![(0u8, Some(2u32)), (1, Some(7))]))
                .unwrap();
        let why = super::explain_de::<Outer>(&bytes).unwrap();
        assert_eq!(why, "7 is odd (at .items[1].value)");
    }
}
