package dev.sluice.bench;

import org.bson.BsonDocument;

import com.mongodb.kafka.connect.source.MongoSourceConfig;
import com.mongodb.kafka.connect.source.topic.mapping.TopicMapper;

/**
 * Sends every change event to `topic.prefix`. mongo-java-server's change events carry no `ns`, which the
 * connector's default mapper needs to name the topic (sluice falls back to the watched namespace instead).
 */
public class FixedTopicMapper implements TopicMapper {
    private String topic;

    @Override
    public void configure(MongoSourceConfig config) {
        topic = config.getString(MongoSourceConfig.TOPIC_PREFIX_CONFIG);
    }

    @Override
    public String getTopic(BsonDocument changeStreamDocument) {
        return topic;
    }
}
