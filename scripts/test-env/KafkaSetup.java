// Used by scripts/test-env/up once Kafka listens: logs in as the admin (super) user with the client settings
// in ADMIN_PROPERTIES, checks the broker answers metadata requests, and grants the application user the ACLs
// orderflow needs: everything on topics and consumer groups, and on the cluster only what an idempotent
// producer and a client describing the cluster ask for. Idempotent. Run as a single-file source program with
// the Kafka jars:
//   java -cp "$ORDERFLOW_CACHE/kafka-<v>/jars/*" KafkaSetup.java BOOTSTRAP ADMIN_PROPERTIES APP_USER
import java.io.FileReader;
import java.util.List;
import java.util.Properties;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.common.acl.AccessControlEntry;
import org.apache.kafka.common.acl.AclBinding;
import org.apache.kafka.common.acl.AclOperation;
import org.apache.kafka.common.acl.AclPermissionType;
import org.apache.kafka.common.resource.PatternType;
import org.apache.kafka.common.resource.ResourcePattern;
import org.apache.kafka.common.resource.ResourceType;

public class KafkaSetup {
  static AclBinding allow(String principal, ResourceType type, String name, AclOperation op) {
    return new AclBinding(new ResourcePattern(type, name, PatternType.LITERAL),
        new AccessControlEntry(principal, "*", op, AclPermissionType.ALLOW));
  }

  public static void main(String[] args) throws Exception {
    Properties props = new Properties();
    try (FileReader r = new FileReader(args[1])) {
      props.load(r);
    }
    props.put("bootstrap.servers", args[0]);
    props.put("request.timeout.ms", "10000");
    props.put("default.api.timeout.ms", "20000");
    String principal = "User:" + args[2];
    try (Admin admin = Admin.create(props)) {
      admin.listTopics().names().get(30, TimeUnit.SECONDS);
      List<AclBinding> acls = List.of(
          allow(principal, ResourceType.TOPIC, "*", AclOperation.ALL),
          allow(principal, ResourceType.GROUP, "*", AclOperation.ALL),
          allow(principal, ResourceType.CLUSTER, "kafka-cluster", AclOperation.IDEMPOTENT_WRITE),
          allow(principal, ResourceType.CLUSTER, "kafka-cluster", AclOperation.DESCRIBE),
          allow(principal, ResourceType.CLUSTER, "kafka-cluster", AclOperation.DESCRIBE_CONFIGS));
      admin.createAcls(acls).all().get(30, TimeUnit.SECONDS);
      System.out.println("kafka: " + acls.size() + " ACLs for " + principal);
    }
  }
}
