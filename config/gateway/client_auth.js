// The gateway's njs functions. Keys are never stored: a presented key is hashed and nginx looks the hash up
// in the rendered maps (client_keys.map, operator_keys.map). A replica's sidecar reads the replica's state
// file (written by the fleet keeper, mode 600) on every request, so a renewed TorchServe key or a replica
// taken out of service takes effect at once, without reloading nginx.
var fs = require('fs');

function presentedKeySha256(r) {
    var header = r.headersIn.Authorization || '';
    var match = /^Bearer\s+(\S{16,256})$/.exec(header);
    if (!match) {
        return '';
    }
    return require('crypto').createHash('sha256').update(match[1]).digest('hex');
}

function replicaState(r) {
    try {
        return JSON.parse(fs.readFileSync(r.variables.replica_state_file));
    } catch (e) {
        return {};
    }
}

// "1" while the keeper has the replica in service; a sidecar answers 503 otherwise, and the gateway sends
// the request to the next replica.
function replicaServing(r) {
    return replicaState(r).in_service === true ? '1' : '0';
}

// The replica's TorchServe key of the kind this listener needs ($replica_key_kind), as a header value.
function replicaAuthorization(r) {
    var key = replicaState(r)[r.variables.replica_key_kind + '_key'];
    return key ? 'Bearer ' + key : '';
}

export default {presentedKeySha256, replicaServing, replicaAuthorization};
