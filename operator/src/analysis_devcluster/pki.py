"""Generate the dev cluster's certificates and keys with ``cryptography``.

Called by :mod:`analysis_devcluster.cluster` once per cluster start. It makes
one CA and, signed by it: the kube-apiserver serving certificate (loopback,
the pod bridge's gateway and the ``kubernetes`` Service's ClusterIP), an
admin client certificate (``O=system:masters``, so RBAC lets it do
anything), the kubelet's serving certificate (its node name and addresses)
and the client certificate the apiserver shows it (``--kubelet-client-*``),
one client certificate per node component (the kubelet as
``system:node:<name>`` in ``system:nodes``, kube-proxy, kube-scheduler and
CoreDNS as the users their RBAC bindings name), and the service-account
signing key pair, and writes them as PEM files.

Every key is ECDSA P-256: generating RSA keys costs tens to hundreds of
milliseconds each, P-256 costs well under one, and Kubernetes accepts both.
:func:`write_serving` makes a separate CA and one serving certificate, for a
test's TLS server (the provider stand-in behind a private CA).

It deliberately does not manage rotation, revocation or a separate front-proxy
or etcd CA: etcd is plain HTTP on loopback, and the certificates live only as
long as the state directory.
"""

import dataclasses
import datetime
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

APISERVER_DNS_NAMES = (
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)
ADMIN_USER = "devcluster-admin"
ADMIN_GROUP = "system:masters"
KUBELET_CLIENT_USER = "kube-apiserver-kubelet-client"  # kubeadm's name for it
# The users of the node's components: the names their default RBAC bindings (or ours, for CoreDNS) grant.
NODE_GROUP = "system:nodes"
KUBE_PROXY_USER = "system:kube-proxy"
SCHEDULER_USER = "system:kube-scheduler"
COREDNS_USER = "devcluster:coredns"
# Backdated so that a clock a little behind on another process never sees a
# not-yet-valid certificate.
_BACKDATE = datetime.timedelta(hours=1)
_VALIDITY = datetime.timedelta(days=30)


@dataclasses.dataclass(frozen=True)
class Issued:
    """A key and the certificate for it."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate


@dataclasses.dataclass(frozen=True)
class Files:
    """Where :func:`write_all` put each PEM file."""

    ca_cert: Path
    apiserver_cert: Path
    apiserver_key: Path
    admin_cert: Path
    admin_key: Path
    kubelet_cert: Path
    kubelet_key: Path
    kubelet_client_cert: Path
    kubelet_client_key: Path
    sa_private_key: Path
    sa_public_key: Path
    # Client certificates of the real node's components (user name -> (cert, key)).
    clients: dict[str, tuple[Path, Path]] = dataclasses.field(default_factory=dict)

    def client(self, user: str) -> tuple[Path, Path]:
        """The certificate and key of ``user`` (``system:node:<name>``, :data:`KUBE_PROXY_USER`, ...)."""
        return self.clients[user]


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str, organizations: tuple[str, ...] = ()) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org) for org in organizations]
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attributes)


def _validity() -> tuple[datetime.datetime, datetime.datetime]:
    now = datetime.datetime.now(datetime.UTC)
    return now - _BACKDATE, now + _VALIDITY


def make_ca(common_name: str = "devcluster-ca") -> Issued:
    """A self-signed CA that may sign leaf certificates only (path length 0)."""
    key = _new_key()
    not_before, not_after = _validity()
    name = _name(common_name)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(key=key, cert=cert)


def issue(
    ca: Issued,
    common_name: str,
    *,
    organizations: tuple[str, ...] = (),
    dns_names: tuple[str, ...] = (),
    ip_addresses: tuple[str, ...] = (),
    server: bool = False,
    client: bool = False,
) -> Issued:
    """A leaf certificate signed by ``ca`` for a fresh key, for serving and/or client auth."""
    key = _new_key()
    not_before, not_after = _validity()
    usages = []
    if server:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    if client:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name, organizations))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
    )
    sans: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return Issued(key=key, cert=builder.sign(ca.key, hashes.SHA256()))


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def private_key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    # Traditional ("EC PRIVATE KEY") rather than PKCS#8: both parse in Go's
    # keyutil, and this is what kubeadm writes, so error messages match docs.
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def public_key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _write(path: Path, data: bytes, mode: int) -> Path:
    # os.open with the mode, so a key is never readable by others, not even
    # between the write and a later chmod.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(path, mode)  # O_CREAT's mode is filtered by the umask, and ignored for existing files.
    return path


def node_user(node_name: str) -> str:
    """The user a node's kubelet is, for the Node authorizer and NodeRestriction."""
    return f"system:node:{node_name}"


def kubelet_serving(ca: Issued, node_name: str, node_ips: tuple[str, ...] = ("127.0.0.1",)) -> Issued:
    """A kubelet serving certificate for the node at ``node_ips``, named as the kubelet names its own."""
    return issue(
        ca,
        node_user(node_name),
        organizations=(NODE_GROUP,),
        dns_names=(node_name, "localhost"),
        ip_addresses=tuple(dict.fromkeys(("127.0.0.1", *node_ips))),
        server=True,
    )


def write_pair(issued: Issued, cert_path: Path, key_path: Path) -> tuple[Path, Path]:
    """Write a certificate (0644) and its key (0600)."""
    return _write(cert_path, cert_pem(issued.cert), 0o644), _write(key_path, private_key_pem(issued.key), 0o600)


@dataclasses.dataclass(frozen=True)
class Serving:
    """A private CA's certificate, and a serving certificate and key it signed (for a test's TLS server)."""

    ca_cert: Path
    cert: Path
    key: Path


def write_serving(
    directory: Path,
    common_name: str,
    *,
    ip_addresses: tuple[str, ...] = ("127.0.0.1",),
    dns_names: tuple[str, ...] = ("localhost",),
) -> Serving:
    """A fresh CA and a server certificate for ``ip_addresses`` and ``dns_names`` signed by it, written into
    ``directory`` (created 0700) as ``ca.crt``, ``server.crt`` and ``server.key``.

    For servers that stand in for a provider behind a gateway with its own CA (the stand-in's ``tls``): a client
    trusts them only if it is given ``ca.crt``, since no system store holds a CA made a moment ago.
    """
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    ca = make_ca(f"{common_name}-ca")
    server = issue(ca, common_name, dns_names=dns_names, ip_addresses=ip_addresses, server=True)
    cert, key = write_pair(server, directory / "server.crt", directory / "server.key")
    return Serving(ca_cert=_write(directory / "ca.crt", cert_pem(ca.cert), 0o644), cert=cert, key=key)


def write_all(
    directory: Path,
    node_name: str = "devcluster-node",
    *,
    host_ips: tuple[str, ...] = ("127.0.0.1",),
    kubernetes_service_ip: str = "10.96.0.1",
) -> Files:
    """Generate the whole PKI into ``directory`` (created 0700); keys 0600, certificates 0644.

    ``host_ips`` are where this host's servers listen (loopback, and the pod
    bridge's gateway when there is a real node): the apiserver's and the
    kubelet's certificates name them, and so does the ClusterIP of the
    ``kubernetes`` Service, through which pods reach the apiserver.
    """
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    ca = make_ca()
    apiserver = issue(
        ca,
        "kube-apiserver",
        dns_names=APISERVER_DNS_NAMES,
        ip_addresses=tuple(dict.fromkeys(("127.0.0.1", *host_ips, kubernetes_service_ip))),
        server=True,
    )
    admin = issue(ca, ADMIN_USER, organizations=(ADMIN_GROUP,), client=True)
    kubelet_cert, kubelet_key = write_pair(
        kubelet_serving(ca, node_name, host_ips), directory / "kubelet.crt", directory / "kubelet.key"
    )
    clients = {}
    for user, groups, stem in (
        (node_user(node_name), (NODE_GROUP,), "node"),
        (KUBE_PROXY_USER, (), "kube-proxy"),
        (SCHEDULER_USER, (), "kube-scheduler"),
        (COREDNS_USER, (), "coredns"),
    ):
        clients[user] = write_pair(
            issue(ca, user, organizations=groups, client=True), directory / f"{stem}.crt", directory / f"{stem}.key"
        )
    kubelet_client_cert, kubelet_client_key = write_pair(
        issue(ca, KUBELET_CLIENT_USER, client=True),
        directory / "apiserver-kubelet-client.crt",
        directory / "apiserver-kubelet-client.key",
    )
    service_accounts = _new_key()
    return Files(
        ca_cert=_write(directory / "ca.crt", cert_pem(ca.cert), 0o644),
        apiserver_cert=_write(directory / "apiserver.crt", cert_pem(apiserver.cert), 0o644),
        apiserver_key=_write(directory / "apiserver.key", private_key_pem(apiserver.key), 0o600),
        admin_cert=_write(directory / "admin.crt", cert_pem(admin.cert), 0o644),
        admin_key=_write(directory / "admin.key", private_key_pem(admin.key), 0o600),
        kubelet_cert=kubelet_cert,
        kubelet_key=kubelet_key,
        kubelet_client_cert=kubelet_client_cert,
        kubelet_client_key=kubelet_client_key,
        sa_private_key=_write(directory / "sa.key", private_key_pem(service_accounts), 0o600),
        sa_public_key=_write(directory / "sa.pub", public_key_pem(service_accounts), 0o644),
        clients=clients,
    )
