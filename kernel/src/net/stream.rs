//! Discard (9) and chargen (19): a sink and a source for throughput checks with any TCP tool.

use alloc::vec::Vec;

use tether_netstack::smoltcp::iface::{SocketHandle, SocketSet};
use tether_netstack::smoltcp::socket::tcp;

const BUFFER: usize = 64 * 1024;
const CHARGEN_LINE: usize = 74;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Discard,
    Chargen,
}

pub struct StreamService {
    kind: Kind,
    port: u16,
    sockets: Vec<(SocketHandle, usize)>,
}

/// The classic RFC 864 pattern: 72 printable characters from a rotating start, then CR LF.
pub fn chargen_byte(position: usize) -> u8 {
    let line = position / CHARGEN_LINE;
    let column = position % CHARGEN_LINE;
    match column {
        72 => b'\r',
        73 => b'\n',
        _ => b' ' + ((line + column) % 95) as u8,
    }
}

impl StreamService {
    pub fn new(
        set: &mut SocketSet<'static>,
        kind: Kind,
        port: u16,
        connections: usize,
    ) -> StreamService {
        let sockets = (0..connections)
            .map(|_| {
                let rx = tcp::SocketBuffer::new(alloc::vec![0u8; BUFFER]);
                let tx = tcp::SocketBuffer::new(alloc::vec![0u8; BUFFER]);
                let mut socket = tcp::Socket::new(rx, tx);
                let _ = socket.listen(port);
                (set.add(socket), 0)
            })
            .collect();
        StreamService {
            kind,
            port,
            sockets,
        }
    }
}

impl super::service::Service for StreamService {
    fn run(&mut self, set: &mut SocketSet<'static>) -> bool {
        let mut moved = false;
        for (handle, position) in &mut self.sockets {
            let socket = set.get_mut::<tcp::Socket>(*handle);
            if !socket.is_open() {
                *position = 0;
                let _ = socket.listen(self.port);
                continue;
            }
            match self.kind {
                Kind::Discard => {
                    while let Ok(n) = socket.recv(|data| (data.len(), data.len())) {
                        if n == 0 {
                            break;
                        }
                        moved = true;
                    }
                }
                Kind::Chargen => {
                    // Whatever the client sends is read and ignored, as RFC 864 says.
                    let _ = socket.recv(|data| (data.len(), ()));
                    while socket.can_send() {
                        let start = *position;
                        let sent = socket.send(|buf| {
                            for (i, b) in buf.iter_mut().enumerate() {
                                *b = chargen_byte(start + i);
                            }
                            (buf.len(), buf.len())
                        });
                        match sent {
                            Ok(n) if n > 0 => {
                                *position += n;
                                moved = true;
                            }
                            _ => break,
                        }
                    }
                }
            }
            if socket.state() == tcp::State::CloseWait {
                socket.close();
            }
        }
        moved
    }
}
