// Runs Debian 12's JMeter 2.13 (package `jmeter`), which cannot load any test plan as shipped:
// Debian's XStream 1.4.20 refuses every class it was not told about
// ("ForbiddenClassException: org.apache.jmeter.save.ScriptWrapper"), and JMeter 2.13 predates
// XStream's allow-lists. This launcher builds JMeter's own class loader (NewDriver), loads
// JMeter's properties and SaveService, allows JMeter's own classes on SaveService's two
// XStream instances, then hands the command line to NewDriver unchanged. A current JMeter (5.x)
// runs bench/loadtest/two-hosts.jmx without it.
//
//   javac -d DIR bench/loadtest/DebianJMeter.java
//   java -cp DIR:/usr/share/jmeter/bin/ApacheJMeter.jar -Djmeter.home=/usr/share/jmeter \
//        DebianJMeter -n -t PLAN.jmx -l OUT.jtl ...
import java.lang.reflect.Field;
import java.lang.reflect.Method;

public class DebianJMeter {
    public static void main(String[] args) throws Exception {
        String home = System.getProperty("jmeter.home", "/usr/share/jmeter");
        Class<?> driver = Class.forName("org.apache.jmeter.NewDriver");
        Field loaderField = driver.getDeclaredField("loader");
        loaderField.setAccessible(true);
        ClassLoader loader = (ClassLoader) loaderField.get(null);
        Thread.currentThread().setContextClassLoader(loader);

        Class<?> utils = loader.loadClass("org.apache.jmeter.util.JMeterUtils");
        utils.getMethod("setJMeterHome", String.class).invoke(null, home);
        utils.getMethod("loadJMeterProperties", String.class)
                .invoke(null, home + "/bin/jmeter.properties");

        Class<?> saveService = Class.forName("org.apache.jmeter.save.SaveService", true, loader);
        Class<?> permission = loader.loadClass("com.thoughtworks.xstream.security.TypePermission");
        Class<?> wildcard = loader.loadClass("com.thoughtworks.xstream.security.WildcardTypePermission");
        Object allowJMeter = wildcard.getConstructor(String[].class).newInstance(
                (Object) new String[] {"org.apache.jmeter.**", "org.apache.jorphan.**", "java.**"});
        for (String name : new String[] {"JMXSAVER", "JTLSAVER"}) {
            Field f = saveService.getDeclaredField(name);
            f.setAccessible(true);
            Object xstream = f.get(null);
            Method add = xstream.getClass().getMethod("addPermission", permission);
            add.invoke(xstream, allowJMeter);
        }
        driver.getMethod("main", String[].class).invoke(null, (Object) args);
    }
}
