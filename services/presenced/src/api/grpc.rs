//! The gRPC front end: `presence.v1.PresenceApi` over tonic, with gRPC
//! health (`grpc.health.v1.Health`) and server reflection, on one listener
//! that also serves the web address book (`web.rs`).

use super::hub::{serve_stream, Hub, StreamSpec};
use super::{Api, ApiError, Principal};
use presence_api::pb;
use presence_api::pb::presence_api_server::{PresenceApi, PresenceApiServer};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

/// The service: the operations of [`Api`] behind authentication, with the
/// outcome of each call counted.
#[derive(Clone)]
pub struct Service {
    pub api: Arc<Api>,
    pub hub: Arc<Hub>,
    pub shutdown: watch::Receiver<bool>,
}

/// The bearer token of a gRPC call (`authorization: Bearer …`).
fn bearer<T>(req: &Request<T>) -> Option<&str> {
    let v = req.metadata().get("authorization")?.to_str().ok()?;
    let (scheme, token) = v.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

impl Service {
    fn who<T>(&self, req: &Request<T>) -> Result<Principal, Status> {
        self.api.principal(bearer(req)).map_err(|e| {
            let s = e.status();
            let _ = self.count::<()>("auth", Err(e));
            s
        })
    }

    /// Count the call's outcome (a bounded label: the gRPC code's name).
    pub fn count<T>(&self, method: &'static str, r: Result<T, ApiError>) -> Result<T, Status> {
        let r = r.map_err(|e| e.status());
        let code = match &r {
            Ok(_) => "OK".to_string(),
            Err(s) => format!("{:?}", s.code()),
        };
        self.api
            .metrics
            .api_requests
            .with_label_values(&[method, &code])
            .inc();
        r
    }

    /// A Watch request as a stream's spec: canonical, deduplicated AoRs.
    pub fn spec(&self, req: pb::WatchRequest) -> Result<StreamSpec, ApiError> {
        let event = self.api.event(&req.event)?;
        if req.aors.len() > self.api.batch {
            return Err(ApiError::Invalid(format!(
                "at most {} AoRs per stream, {} asked",
                self.api.batch,
                req.aors.len()
            )));
        }
        let mut aors = Vec::with_capacity(req.aors.len());
        let mut seen = std::collections::HashSet::new();
        for a in &req.aors {
            let aor = self.api.aor(a)?.to_string();
            if seen.insert(aor.clone()) {
                aors.push(aor);
            }
        }
        let mut resume = HashMap::new();
        for (a, v) in req.resume {
            resume.insert(self.api.aor(&a)?.to_string(), v);
        }
        let heartbeat = match req.heartbeat_seconds {
            0 => self.api.heartbeat,
            s => Duration::from_secs(u64::from(s.clamp(1, 3600))),
        };
        Ok(StreamSpec {
            event,
            aors,
            resume,
            heartbeat,
        })
    }
}

#[tonic::async_trait]
impl PresenceApi for Service {
    async fn get_presence(
        &self,
        req: Request<pb::GetPresenceRequest>,
    ) -> Result<Response<pb::GetPresenceResponse>, Status> {
        let who = self.who(&req)?;
        let r = self.api.get_presence(&who, req.into_inner()).await;
        self.count("GetPresence", r).map(Response::new)
    }

    type WatchStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<pb::WatchResponse, Status>> + Send + 'static>,
    >;

    async fn watch(
        &self,
        req: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let who = self.who(&req)?;
        let spec = who.read().and_then(|()| self.spec(req.into_inner()));
        let spec = self.count("Watch", spec)?;
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(serve_stream(
            self.hub.clone(),
            spec,
            tx,
            self.shutdown.clone(),
        ));
        // tonic wants Result items: wrap them (the stream ends cleanly).
        // When the client goes away tonic drops this stream, and with it
        // the receiver: serve_stream sees its sender closed at once (not
        // at its next send) and lets go of the stream's registrations.
        let stream = futures_util::StreamExt::map(ReceiverStream::new(rx), Ok);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn publish(
        &self,
        req: Request<pb::PublishRequest>,
    ) -> Result<Response<pb::PublishResponse>, Status> {
        let who = self.who(&req)?;
        let r = self.api.publish(&who, req.into_inner()).await;
        self.count("Publish", r).map(Response::new)
    }

    async fn unpublish(
        &self,
        req: Request<pb::UnpublishRequest>,
    ) -> Result<Response<pb::UnpublishResponse>, Status> {
        let who = self.who(&req)?;
        let r = self.api.unpublish(&who, req.into_inner()).await;
        self.count("Unpublish", r).map(Response::new)
    }

    async fn set_hard_state(
        &self,
        req: Request<pb::SetHardStateRequest>,
    ) -> Result<Response<pb::SetHardStateResponse>, Status> {
        let who = self.who(&req)?;
        let r = self.api.set_hard_state(&who, req.into_inner()).await;
        self.count("SetHardState", r).map(Response::new)
    }

    async fn clear_hard_state(
        &self,
        req: Request<pb::ClearHardStateRequest>,
    ) -> Result<Response<pb::ClearHardStateResponse>, Status> {
        let who = self.who(&req)?;
        let r = self.api.clear_hard_state(&who, req.into_inner()).await;
        self.count("ClearHardState", r).map(Response::new)
    }

    async fn list_subscriptions(
        &self,
        req: Request<pb::ListSubscriptionsRequest>,
    ) -> Result<Response<pb::ListSubscriptionsResponse>, Status> {
        let who = self.who(&req)?;
        let r = self.api.list_subscriptions(&who, req.into_inner()).await;
        self.count("ListSubscriptions", r).map(Response::new)
    }

    async fn end_subscription(
        &self,
        req: Request<pb::EndSubscriptionRequest>,
    ) -> Result<Response<pb::EndSubscriptionResponse>, Status> {
        let who = self.who(&req)?;
        let r = self.api.end_subscription(&who, req.into_inner()).await;
        self.count("EndSubscription", r).map(Response::new)
    }

    async fn list_registrations(
        &self,
        req: Request<pb::ListRegistrationsRequest>,
    ) -> Result<Response<pb::ListRegistrationsResponse>, Status> {
        let who = self.who(&req)?;
        let r = self.api.list_registrations(&who, req.into_inner()).await;
        self.count("ListRegistrations", r).map(Response::new)
    }

    async fn send_message(
        &self,
        req: Request<pb::SendMessageRequest>,
    ) -> Result<Response<pb::SendMessageResponse>, Status> {
        let who = self.who(&req)?;
        let r = self.api.send_message(&who, req.into_inner()).await;
        self.count("SendMessage", r).map(Response::new)
    }

    async fn search_directory(
        &self,
        req: Request<pb::SearchDirectoryRequest>,
    ) -> Result<Response<pb::SearchDirectoryResponse>, Status> {
        let who = self.who(&req)?;
        let r = self.api.search_directory(&who, req.into_inner()).await;
        self.count("SearchDirectory", r).map(Response::new)
    }

    async fn login(
        &self,
        req: Request<pb::LoginRequest>,
    ) -> Result<Response<pb::LoginResponse>, Status> {
        let r = self.api.login(req.into_inner()).await;
        self.count("Login", r).map(Response::new)
    }
}

/// Serve gRPC (the service, health, reflection) and the web address book on
/// `listener` until `shutdown`.
pub async fn serve(
    service: Service,
    listener: tokio::net::TcpListener,
    mut shutdown: watch::Receiver<bool>,
) {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<PresenceApiServer<Service>>().await;
    let reflection = match tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(presence_api::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "gRPC reflection cannot start");
            return;
        }
    };
    let web = super::web::router(service.clone());
    let routes = tonic::service::Routes::new(PresenceApiServer::new(service))
        .add_service(health_service)
        .add_service(reflection)
        .into_axum_router()
        .merge(web);
    // Small answers and stream events go out at once: without TCP_NODELAY,
    // Nagle's algorithm waits for the peer's delayed ACK (40 ms) whenever
    // a write follows an unacknowledged one.
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let stop = async move {
        let _ = shutdown.wait_for(|s| *s).await;
        health.set_not_serving::<PresenceApiServer<Service>>().await;
    };
    if let Err(e) = tonic::transport::Server::builder()
        .accept_http1(true)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .add_routes(tonic::service::Routes::from(routes))
        .serve_with_incoming_shutdown(incoming, stop)
        .await
    {
        tracing::error!(error = %e, "the API listener failed");
    }
}
