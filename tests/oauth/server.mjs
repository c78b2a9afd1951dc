// A real OAuth 2.0 authorization server for Cordon's tests, on loopback: the `agent` client
// gets tokens by client credentials; the `cordon` client (the responder) may revoke any token
// (RFC 7009) and introspect any (RFC 7662). Prints "ready PORT" when listening.
import Provider from 'oidc-provider';

const port = Number(process.env.PORT || 0);
const agentSecret = process.env.AGENT_SECRET || 'agent-secret-0123456789';
const cordonSecret = process.env.CORDON_SECRET || 'cordon-secret-0123456789';

const provider = new Provider(`http://127.0.0.1:${port}`, {
  clients: [
    { client_id: 'agent', client_secret: agentSecret, grant_types: ['client_credentials'], redirect_uris: [], response_types: [] },
    { client_id: 'cordon', client_secret: cordonSecret, grant_types: ['client_credentials'], redirect_uris: [], response_types: [] },
  ],
  features: {
    clientCredentials: { enabled: true },
    introspection: { enabled: true, allowedPolicy: async () => true },
    revocation: {
      enabled: true,
      // The security responder may revoke any client's token; a client its own.
      allowedPolicy: async (ctx, client, token) => client.clientId === 'cordon' || client.clientId === token.clientId,
    },
    devInteractions: { enabled: false },
  },
});

const server = provider.listen(port, '127.0.0.1', () => {
  console.log(`ready ${server.address().port}`);
});
