//! The reader of fuzz bytes: integers and choices taken from the front, zeros once it is used
//! up.

/// A cursor over the fuzz input; reads past the end give zeros.
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    /// A cursor at the start of `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    /// Whether everything was read.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Up to `n` bytes.
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (head, tail) = self.data.split_at(n);
        self.data = tail;
        head
    }

    /// The rest.
    pub fn rest(&mut self) -> &'a [u8] {
        let all = self.data;
        self.data = &[];
        all
    }

    fn le(&mut self, n: usize) -> u64 {
        let mut v = [0u8; 8];
        let b = self.bytes(n);
        v[..b.len()].copy_from_slice(b);
        u64::from_le_bytes(v)
    }

    /// One byte.
    pub fn u8(&mut self) -> u8 {
        self.le(1) as u8
    }

    /// Two bytes.
    pub fn u16(&mut self) -> u16 {
        self.le(2) as u16
    }

    /// Four bytes.
    pub fn u32(&mut self) -> u32 {
        self.le(4) as u32
    }

    /// Eight bytes.
    pub fn u64(&mut self) -> u64 {
        self.le(8)
    }

    /// One of `items` (which must not be empty).
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[usize::from(self.u8()) % items.len()]
    }
}
