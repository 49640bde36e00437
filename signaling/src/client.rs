//! An async signaling client over WebSocket, for tests, the load generator and the CLI.

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::protocol::{ClientMessage, HttpError, ServerMessage};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server refused the upgrade (e.g. 401 for a bad token) with this status and body.
    #[error("server refused the connection with HTTP {status}: {body:?}")]
    Rejected { status: u16, body: Option<HttpError> },
    #[error("websocket: {0}")]
    WebSocket(#[from] tokio_tungstenite::tungstenite::Error),
    #[error("server sent a frame that is not a known message: {0}")]
    Decode(String),
}

/// A signaling connection. [`Client::split`] gives a sender and a receiver for concurrent use.
pub struct Client {
    ws: Ws,
}

impl Client {
    /// Connects to `url` (e.g. `ws://127.0.0.1:7880/v1/ws`) with `token` as `access_token`.
    pub async fn connect(url: &str, token: &str) -> Result<Client, ClientError> {
        let sep = if url.contains('?') { '&' } else { '?' };
        Self::connect_request(format!("{url}{sep}access_token={token}")).await
    }

    /// Connects with a prepared request (custom headers, no token, ...).
    pub async fn connect_request(req: impl IntoClientRequest + Unpin) -> Result<Client, ClientError> {
        match tokio_tungstenite::connect_async(req).await {
            Ok((ws, _)) => Ok(Client { ws }),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                let status = resp.status().as_u16();
                let body = resp.body().as_ref().and_then(|b| serde_json::from_slice(b).ok());
                Err(ClientError::Rejected { status, body })
            }
            Err(e) => Err(e.into()),
        }
    }

    pub async fn send(&mut self, msg: &ClientMessage) -> Result<(), ClientError> {
        send(&mut self.ws, msg).await
    }

    /// Sends a raw text frame, e.g. to test how the server handles garbage.
    pub async fn send_text(&mut self, text: &str) -> Result<(), ClientError> {
        Ok(self.ws.send(Message::text(text)).await?)
    }

    /// The next server message; `None` once the server closed the socket.
    pub async fn recv(&mut self) -> Result<Option<ServerMessage>, ClientError> {
        recv(&mut self.ws).await
    }

    /// Closes the socket politely.
    pub async fn close(mut self) -> Result<(), ClientError> {
        Ok(self.ws.close(None).await?)
    }

    pub fn split(self) -> (ClientSender, ClientReceiver) {
        let (sink, stream) = self.ws.split();
        (ClientSender { sink }, ClientReceiver { stream })
    }
}

/// The sending half of a split [`Client`].
pub struct ClientSender {
    sink: SplitSink<Ws, Message>,
}

impl ClientSender {
    pub async fn send(&mut self, msg: &ClientMessage) -> Result<(), ClientError> {
        let text = serde_json::to_string(msg).map_err(|e| ClientError::Decode(e.to_string()))?;
        Ok(self.sink.send(Message::text(text)).await?)
    }

    /// Sends a raw text frame, e.g. to test how the server handles garbage.
    pub async fn send_text(&mut self, text: &str) -> Result<(), ClientError> {
        Ok(self.sink.send(Message::text(text)).await?)
    }

    pub async fn close(&mut self) -> Result<(), ClientError> {
        Ok(self.sink.close().await?)
    }
}

/// The receiving half of a split [`Client`].
pub struct ClientReceiver {
    stream: SplitStream<Ws>,
}

impl ClientReceiver {
    pub async fn recv(&mut self) -> Result<Option<ServerMessage>, ClientError> {
        next_message(&mut self.stream).await
    }
}

async fn send(ws: &mut Ws, msg: &ClientMessage) -> Result<(), ClientError> {
    let text = serde_json::to_string(msg).map_err(|e| ClientError::Decode(e.to_string()))?;
    Ok(ws.send(Message::text(text)).await?)
}

async fn recv(ws: &mut Ws) -> Result<Option<ServerMessage>, ClientError> {
    next_message(ws).await
}

async fn next_message<S>(stream: &mut S) -> Result<Option<ServerMessage>, ClientError>
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    while let Some(frame) = stream.next().await {
        match frame {
            Ok(Message::Text(text)) => {
                return serde_json::from_str(text.as_str())
                    .map(Some)
                    .map_err(|e| ClientError::Decode(format!("{e}: {}", text.as_str())));
            }
            Ok(Message::Close(_)) => return Ok(None),
            Ok(_) => continue, // ping/pong/binary: not protocol messages
            Err(tokio_tungstenite::tungstenite::Error::ConnectionClosed) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(None)
}
