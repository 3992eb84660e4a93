package dev.sluice.bench;

import java.util.Collection;
import java.util.List;
import java.util.Map;
import java.util.concurrent.atomic.AtomicLong;

import org.apache.kafka.common.config.ConfigDef;
import org.apache.kafka.connect.connector.Task;
import org.apache.kafka.connect.sink.SinkConnector;
import org.apache.kafka.connect.sink.SinkRecord;
import org.apache.kafka.connect.sink.SinkTask;

/**
 * A sink that drops every record after conversion: Kafka Connect's own cost (consume, convert, commit) with no
 * write stage. It logs how many records it has seen every 10,000, so the bench can tell when it is done.
 */
public class DropSinkConnector extends SinkConnector {
    private Map<String, String> props;

    @Override public void start(Map<String, String> props) { this.props = props; }
    @Override public Class<? extends Task> taskClass() { return DropTask.class; }
    @Override public List<Map<String, String>> taskConfigs(int max) { return List.of(props); }
    @Override public void stop() {}
    @Override public ConfigDef config() { return new ConfigDef(); }
    @Override public String version() { return "1"; }

    public static class DropTask extends SinkTask {
        static final AtomicLong SEEN = new AtomicLong();

        @Override public String version() { return "1"; }
        @Override public void start(Map<String, String> props) {}
        @Override public void stop() {}

        @Override
        public void put(Collection<SinkRecord> records) {
            long before = SEEN.get();
            long after = SEEN.addAndGet(records.size());
            if (after / 10_000 != before / 10_000) {
                System.out.println("sluice-bench dropped " + after);
            }
        }
    }
}
