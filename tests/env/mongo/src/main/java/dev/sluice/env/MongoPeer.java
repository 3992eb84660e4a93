package dev.sluice.env;

import de.bwaldvogel.mongo.MongoServer;
import de.bwaldvogel.mongo.MongoVersion;
import de.bwaldvogel.mongo.backend.memory.MemoryBackend;
import java.util.List;

/**
 * The loopback MongoDB wire peer: mongo-java-server with its in-memory backend and the oplog on so that change
 * streams work.
 *
 * <p>It reports MongoDB 4.4 (wire version 9), the oldest server the official Rust driver 3.x accepts: the
 * newest ServerVersion mongo-java-server ships (MONGO_5_0) reports wire version 8, which that driver refuses.
 *
 * <p>Usage: {@code java -cp ... dev.sluice.env.MongoPeer HOST PORT}. Prints {@code READY host:port} once it
 * accepts connections and shuts down cleanly on SIGTERM.
 */
public final class MongoPeer {
    private MongoPeer() {}

    private static final MongoVersion MONGO_4_4 = new MongoVersion() {
        @Override
        public List<Integer> getVersionArray() {
            return List.of(4, 4, 0);
        }

        @Override
        public int getWireVersion() {
            return 9;
        }
    };

    public static void main(String[] args) {
        if (args.length != 2) {
            System.err.println("usage: MongoPeer HOST PORT");
            System.exit(2);
        }
        String host = args[0];
        int port = Integer.parseInt(args[1]);
        if (!host.startsWith("127.")) {
            System.err.println("MongoPeer binds to loopback only, not " + host);
            System.exit(2);
        }
        MemoryBackend backend = new MemoryBackend();
        backend.version(MONGO_4_4);
        MongoServer server = new MongoServer(backend);
        server.enableOplog();
        server.bind(host, port);
        Runtime.getRuntime().addShutdownHook(new Thread(server::shutdownNow, "mongo-peer-shutdown"));
        System.out.println("READY " + host + ":" + port);
        System.out.flush();
    }
}
